"""The ``unpack`` transition of ``image.pull``: downloads and unpacks overlap.

A layer's ``layer.unpack`` run starts as soon as its blob is stored and its chain key is
known (the digests of it and every layer below it), while later blobs still download:

* a snapshotter with ``detached_layers`` (overlay: an upper directory holds only its own
  layer's changes) unpacks every layer into ``extract-KEY`` *without* its parent, so layers
  unpack in parallel (at most ``unpack`` at a time); this transition then attaches each to
  its parent and commits it, bottom-up;
* otherwise (btrfs, devmapper: a layer is applied onto its parent's tree) layer *i* starts
  when layer *i-1* is committed, still overlapping with the downloads of the layers above.

The per-image limits (entries, bytes) are charged while streaming with what the layers
below had used when the layer started, and checked again on the image's totals here, so
parallel layers cannot together exceed them unnoticed. The image's extraction clock starts
once, at the first run of this transition (kept in the run's progress across retries and
restarts), and every layer's unpack counts against it.

This transition waits for runs on other queues only (download, unpack), never its own
(``image.pull`` has no queue), as the engine requires.
"""

from __future__ import annotations

import time

from capsa.errors import Canceled, CapsaError, FailedPrecondition, LimitExceeded, NotFound, Unavailable
from capsa.fsm import Abort, Context, RunHandle, decode
from capsa.images.pull import (
    UNPACK,
    PullContext,
    chain_key,
    extract_key,
    fetch_handles,
    no_second_retry,
)
from capsa.images.pull_types import FetchResult, PullPlan, UnpackRequest, UnpackResult
from capsa.images.validity import snapshot_problem

__all__ = ["unpack_image"]

_POLL_S = 0.02  # how often finished child runs are looked for (a cheap indexed read each)
_MAX_REDO = 3


def unpack_image(pc: PullContext, ctx: Context, plan: PullPlan) -> PullPlan:
    if not plan.layers:
        raise FailedPrecondition(f"image {plan.ref} has no layers")
    ctx.progress(phase="unpack")
    started_at = float(ctx.recall("unpack_started_at") or time.time())
    ctx.progress(unpack_started_at=started_at)
    n = len(plan.layers)
    fetches = fetch_handles(ctx, plan)
    diff_ids = plan.diff_ids()
    detached_ok = pc.snapshotter.detached_layers
    digests: list[str | None] = [None] * n
    unpacks: dict[int, RunHandle] = {}
    keys: list[str] = []
    linked, entries, total = 0, 0, 0
    redo: dict[int, int] = {}
    try:
        while linked < n:
            ctx.check_cancel()
            moved = False
            for i in range(n):
                if digests[i] is None and fetches[i].done():
                    got = decode(FetchResult, fetches[i].wait().output)
                    digests[i] = plan.layers[i].digest = got.digest
                    plan.layers[i].size = got.size
                    moved = True
            keys = _known_keys(digests)
            ready = len(keys) == n or pc.pipeline
            for i in range(len(keys) if ready else 0):
                if i in unpacks or not (detached_ok or i == linked):
                    continue
                unpacks[i] = ctx.engine.start(UNPACK, keys[i], "unpack", UnpackRequest(
                    key=keys[i], parent=keys[i - 1] if i else None, digest=str(digests[i]),
                    media_type=plan.layers[i].media_type, ref=plan.ref, entries_so_far=entries, bytes_so_far=total,
                    diff_id=diff_ids[i], started_at=started_at, detached=detached_ok and i > linked))
                moved = True
            while linked < n and linked in unpacks and unpacks[linked].done():
                result = decode(UnpackResult, unpacks[linked].wait().output)
                if not result.committed:
                    _attach_and_commit(pc, keys[linked], keys[linked - 1] if linked else None, result)
                elif snapshot_problem(pc.snapshotter, keys[linked]) is not None:
                    # valid when its run looked, then removed with a broken layer below it
                    # (validity repairs drop what stands on a broken snapshot): unpack it again
                    redo[linked] = redo.get(linked, 0) + 1
                    if redo[linked] > _MAX_REDO:
                        raise FailedPrecondition(f"layer snapshot {keys[linked]} keeps disappearing")
                    del unpacks[linked]
                    moved = True
                    break
                entries += result.entries
                total += result.bytes
                _check_image_totals(pc, plan, entries, total)
                linked += 1
                moved = True
                ctx.progress(layers_unpacked=linked)
            if not moved:
                time.sleep(_POLL_S)
    except Abort:
        _settle([*fetches, *unpacks.values()])
        raise
    except Canceled:
        raise  # the children are shared with other pulls and continue (or are parked at shutdown)
    except CapsaError as exc:
        _settle([*fetches, *unpacks.values()])
        raise no_second_retry(exc) from None
    plan.chain = keys
    plan.unpacked_size = total
    return plan


def _known_keys(digests: list[str | None]) -> list[str]:
    """Chain keys of the bottom layers whose digests (and all below) are known."""
    keys: list[str] = []
    parent: str | None = None
    for digest in digests:
        if digest is None:
            break
        parent = chain_key(parent, digest)
        keys.append(parent)
    return keys


def _attach_and_commit(pc: PullContext, key: str, parent: str | None, result: UnpackResult) -> None:
    """Join a detached layer to its (committed) parent and commit it; once, whoever asks."""
    sn = pc.snapshotter
    with pc.link_lock(key):
        if snapshot_problem(sn, key) is None:
            return  # another pull sharing this layer committed it first
        extract = extract_key(key)
        try:
            info = sn.stat(extract)
        except NotFound:
            # gone between its unpack and now (a prune, a concurrent repair): unpack it again
            raise Unavailable(f"the unpacked layer {key} vanished before it was committed") from None
        if parent is not None and info.parent is None:
            sn.attach(extract, parent, inherit_root=not result.root_meta)
        sn.commit(key, extract)


def _check_image_totals(pc: PullContext, plan: PullPlan, entries: int, total: int) -> None:
    limits = pc.limits
    if entries > limits.max_entries or total > limits.max_total_bytes:
        pc.seen.limit_refused("max_entries" if entries > limits.max_entries else "max_total_bytes")
    if entries > limits.max_entries:
        raise Abort(LimitExceeded(f"image {plan.ref}: {entries} entries exceed max_entries={limits.max_entries}",
                                  detail={"limit": "max_entries", "entry": ""}))
    if total > limits.max_total_bytes:
        raise Abort(LimitExceeded(f"image {plan.ref}: {total} bytes exceed max_total_bytes={limits.max_total_bytes}",
                                  detail={"limit": "max_total_bytes", "entry": ""}))


def _settle(handles: list[RunHandle]) -> None:
    """Wait for the child runs this pull started, so a failed pull leaves none running."""
    for handle in handles:
        try:
            handle.wait()
        except CapsaError:
            continue

"""The runtime build, as one durable state machine. Reading the declaration tells its life::

    runtime.build  (resource NAME@VERSION)   check -> base -> steps -> register

* ``check``: an intact runtime built from the same spec hands off at once ("up to date"); one
  built from a different spec is a Conflict unless ``force``; ``force`` salts every key below
  so nothing earlier is reused.
* ``base``: the bottom of the runtime. An image (pulled through the image machines when
  missing) or an existing runtime is reused as is, snapshots and layer blobs included. A
  debootstrap root is made in two stages (:mod:`capsa.runtimes._debootstrap`): download and
  unpack on the host into a snapshot capsa owns, then ``debootstrap --second-stage`` as an
  isolated build job on that snapshot.
* ``steps``: each step runs as an ordinary capsa job (host network, default seccomp and
  capabilities, pivot_root'ed into a writable snapshot of everything below it; never a host
  shell). Its changes are exported as an OCI layer blob and the snapshot is committed under
  the step's *cache key* — sha256 over the parent's key and the step's canonical definition —
  so a rebuild, or a resumed build, reuses every step whose inputs did not change.
* ``register``: an OCI config and manifest over base layers + step layers go into the content
  store and the image ``runtime:NAME@VERSION`` is recorded with exactly that snapshot chain.

Every transition checks real state first (committed snapshot with its layer blob? job of an
interrupted attempt still running?), so a build resumed after ``kill -9`` converges.
Progress goes to a per-run build log (``<home>/runtimes/builds/<run>.log``): the builder's own
lines (``==> step 2/3: ...``), debootstrap's output and every build job's output as it runs,
which :meth:`capsa.runtimes.service.RuntimeService.watch` streams to the CLI.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capsa.errors import Canceled, CapsaError, Conflict, FailedPrecondition, NotFound
from capsa.fsm import Abort, Context, Handoff, Machine, RunInfo
from capsa.images.oci import OCI_CONFIG, OCI_MANIFEST
from capsa.images.service import ImageService, JobRootfs
from capsa.images.store import ImageRecord
from capsa.jobs.model import JobState, RunRequest
from capsa.jobs.service import JobService
from capsa.runtimes._cache import BuildCache
from capsa.runtimes._debootstrap import SECOND_STAGE, first_stage, host_architecture, tidy_first_stage
from capsa.runtimes._layers import LayerRef, committed_layer, export_active, host_dns, import_layer
from capsa.runtimes.spec import DebootstrapBase, RuntimeSpec

__all__ = ["BUILD", "LABELS", "BuildContext", "Builder", "BuildLog", "image_ref", "step_key"]

BUILD = "runtime.build"
IMAGE_PREFIX = "runtime:"
#: OCI config labels that make an image a runtime (they travel with it when pushed)
LABELS = {"name": "org.capsa.runtime.name", "version": "org.capsa.runtime.version",
          "spec_hash": "org.capsa.runtime.spec-hash", "spec": "org.capsa.runtime.spec",
          "description": "org.opencontainers.image.description"}
#: directories the job runtime adds to a root for its own mounts (capsa.runtime.stage2)
JOB_MOUNT_POINTS = ("work", "capsules")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What debootstrap's second stage leaves that no runtime needs: downloaded .debs.
_SECOND_STAGE_SCRIPT = " ".join(SECOND_STAGE) + " && apt-get clean && rm -rf /var/lib/apt/lists/*"


def image_ref(ref: str) -> str:
    """The image that implements runtime ``NAME@VERSION``."""
    return IMAGE_PREFIX + ref


def step_key(parent: str, what: dict[str, Any], salt: str = "") -> str:
    """A layer's identity: what it was built on and how (plus a salt for forced rebuilds)."""
    text = json.dumps({"parent": parent, "what": what, "salt": salt}, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(("capsa-runtime-layer\n" + text).encode()).hexdigest()


class BuildLog:
    """The append-only build log of one run (bytes as produced, plus the builder's own lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, data: bytes) -> None:
        with open(self.path, "ab") as f:
            f.write(data)

    def line(self, text: str) -> None:
        self.write((text.rstrip("\n") + "\n").encode())


@dataclass
class BuildContext:
    """What the transitions need; one per daemon."""

    images: ImageService
    jobs: JobService
    logs_dir: Path
    cache: BuildCache | None = None
    resolv_conf: Path = Path("/etc/resolv.conf")
    step_timeout: str = "6h"


class Builder:
    def __init__(self, bc: BuildContext) -> None:
        self.bc = bc
        self.pc = bc.images.pc
        self.sn = bc.images.pc.snapshotter

    def machine(self, queue: str | None = None) -> Machine:
        return (Machine.define(BUILD, queue=queue).start("check", self.check).then("base", self.base)
                .then("steps", self.steps).then("register", self.register).end(self.cleanup))

    def log(self, run_id: str) -> BuildLog:
        return BuildLog(self.bc.logs_dir / f"{run_id}.log")

    # -- check ------------------------------------------------------------------------------------
    def check(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        spec = RuntimeSpec.model_validate(req["spec"])
        log = self.log(ctx.run_id)
        existing = self.pc.images.find(image_ref(spec.ref))
        if existing is not None and not req["force"]:
            built_from = runtime_labels(existing).get(LABELS["spec_hash"])
            if built_from != req["spec_hash"]:
                raise Abort(Conflict(f"runtime {spec.ref} exists, built from a different spec ({built_from});"
                                     " bump the version, or rebuild it with --force"))
            if self._intact(existing):
                log.line(f"==> runtime {spec.ref} is up to date ({existing.digest})")
                raise Handoff({"image": existing.to_dict(), "up_to_date": True})
        log.line(f"==> building runtime {spec.ref} ({len(spec.steps)} steps"
                 + (", --force: nothing reused)" if req["force"] else ")"))
        return {**req, "salt": ctx.run_id if req["force"] else ""}

    def _intact(self, rec: ImageRecord) -> bool:
        try:
            return all(self.sn.stat(k).kind.value == "committed" for k in rec.chain)
        except NotFound:
            return False

    # -- base -------------------------------------------------------------------------------------
    def base(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        spec = RuntimeSpec.model_validate(req["spec"])
        log = self.log(ctx.run_id)
        ctx.progress(phase="base")
        if spec.base.debootstrap is None:
            ref = spec.base.image if spec.base.image is not None else image_ref(str(spec.base.runtime))
            log.line(f"==> base: {'image' if spec.base.image is not None else 'runtime'} {ref}")
            rec = self._base_image(ref, runtime=spec.base.runtime is not None)
            diff_ids = list((rec.config.get("rootfs") or {}).get("diff_ids") or [])
            if len(diff_ids) != len(rec.layers):
                raise Abort(FailedPrecondition(f"base {ref}: its config lists {len(diff_ids)} diff IDs"
                                               f" for {len(rec.layers)} layers"))
            base = {"chain": rec.chain, "layers": rec.layers, "diff_ids": diff_ids, "config": rec.config,
                    "history": list(rec.config.get("history") or [])}
            return {**req, "base": base}
        arch = host_architecture()
        params = spec.base.debootstrap.model_copy(update={"mirror": req["mirror"]})
        key = step_key("", {"debootstrap": params.model_dump(mode="json"), "arch": arch}, req["salt"])
        what = f"debootstrap {params.suite} ({params.variant}, {params.mirror}, {arch})"
        layer = self._reuse(ctx, key, None, req["salt"], what, log)
        if layer is None:
            layer = self._debootstrap(ctx, params, arch, key, req["salt"], log)
        base = {"chain": [key], "layers": [_layer_json(layer)], "diff_ids": [layer.digest],
                "config": {"architecture": arch, "os": "linux"},
                "history": [{"created_by": f"capsa runtime: {what}"}]}
        return {**req, "base": base}

    def _base_image(self, ref: str, *, runtime: bool) -> ImageRecord:
        try:
            return self.bc.images.get(ref)
        except NotFound:
            if runtime:
                raise Abort(NotFound(f"base runtime {ref.removeprefix(IMAGE_PREFIX)} is not built here"
                                     " (see `capsa runtime ls`)")) from None
        return self.bc.images.pull(ref)

    def _debootstrap(self, ctx: Context, params: DebootstrapBase, arch: str, key: str, salt: str,
                     log: BuildLog) -> LayerRef:
        scratch = self._scratch(ctx, "base")
        self._reset(ctx, scratch, None)
        log.line(f"==> base: debootstrap {params.suite} from {params.mirror} (first stage, on the host)")
        with self.sn.writable(scratch) as tree:
            first_stage(Path(tree), params, params.mirror, arch=arch, log=log.write, cancel=ctx.cancel)
            tidy_first_stage(Path(tree))
        log.line("==> base: debootstrap second stage (in an isolated build job)")
        # container=lxc is debootstrap's own switch for roots where mknod is not allowed (a job has
        # no CAP_MKNOD): it skips its mknod probe; the job's /dev is the runtime's anyway.
        self._run_job(ctx, scratch, ["/bin/sh", "-ec", _SECOND_STAGE_SCRIPT], {"container": "lxc"}, "debootstrap", log)
        return self._export(scratch, key, salt, log)

    # -- steps ------------------------------------------------------------------------------------
    def steps(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        spec = RuntimeSpec.model_validate(req["spec"])
        log = self.log(ctx.run_id)
        parent = req["base"]["chain"][-1]
        done: list[dict[str, Any]] = []
        for i, step in enumerate(spec.steps, start=1):
            ctx.check_cancel()
            what = f"step {i}/{len(spec.steps)}: {step.describe()}"
            ctx.progress(phase="steps", step=i, steps=len(spec.steps))
            key = step_key(parent, step.model_dump(mode="json"), req["salt"])
            layer = self._reuse(ctx, key, parent, req["salt"], what, log)
            if layer is None:
                log.line(f"==> {what}")
                scratch = self._scratch(ctx, f"step{i}")
                self._reset(ctx, scratch, parent)
                with host_dns(self.sn, scratch, self.bc.resolv_conf):
                    self._run_job(ctx, scratch, step.argv(), spec.env, f"step-{i}", log)
                layer = self._export(scratch, key, req["salt"], log)
            done.append({**_layer_json(layer), "key": key, "created_by": f"capsa runtime: {step.describe()}"})
            parent = key
        return {**req, "built": done}

    def _reuse(self, ctx: Context, key: str, parent: str | None, salt: str, what: str,
               log: BuildLog) -> LayerRef | None:
        """The layer for ``key`` from this daemon's snapshots or the build cache, else None."""
        layer = committed_layer(self.sn, self.pc.content, key)
        if layer is not None:
            log.line(f"==> {what} (cached)")
            return layer
        with contextlib.suppress(NotFound):
            info = self.sn.stat(key)
            if info.kind.value == "committed":  # its blob is gone (pruned): make it again
                try:
                    self.sn.remove(key)
                except CapsaError as exc:
                    raise Abort(FailedPrecondition(f"{what}: the layer blob of snapshot {key} is gone and the"
                                                   f" snapshot is still in use ({exc}); rebuild with --force")) from exc
        cached = self.bc.cache.get(key) if self.bc.cache is not None and not salt else None
        if cached is None:
            return None
        log.line(f"==> {what} (from the build cache)")
        return import_layer(self.sn, self.pc.content, self.pc.limits, cached.path, cached.digest, cached.size,
                            parent, key, self._scratch(ctx, "import"))

    def _export(self, scratch: str, key: str, salt: str, log: BuildLog) -> LayerRef:
        started = time.monotonic()
        layer, stats = export_active(self.sn, self.pc.content, scratch, key, drop_empty=JOB_MOUNT_POINTS)
        log.line(f"    layer {layer.digest[:19]} ({stats.entries} entries, {layer.size} bytes,"
                 f" {stats.whiteouts} deletions) in {time.monotonic() - started:.1f}s")
        if self.bc.cache is not None and not salt:
            with contextlib.suppress(OSError):
                self.bc.cache.put(key, self.pc.content.path(layer.digest), layer.digest, layer.size, layer.media_type)
        return layer

    # -- build jobs -------------------------------------------------------------------------------
    def _scratch(self, ctx: Context, label: str) -> str:
        return f"extract-runtime-{ctx.run_id}-{label}"

    def _reset(self, ctx: Context, scratch: str, parent: str | None) -> None:
        """A fresh active snapshot for this attempt; an earlier attempt's job and tree are dropped."""
        self._reap(ctx)
        with contextlib.suppress(NotFound):
            self.sn.remove(scratch)
        self.sn.prepare(scratch, parent, labels={"capsa/runtime-build": ctx.run_id})

    def _reap(self, ctx: Context, *, keep_ended: bool = False) -> None:
        """Stop (and unless ``keep_ended``, forget) build jobs of this runtime an earlier attempt left.

        Found by their name, which is real state: the engine dedupes builds per runtime, so
        any such job belongs to this build.
        """
        prefix = f"runtime-build/{ctx.resource_id}/"
        for job in self.bc.jobs.list(all=not keep_ended):
            if not job.name.startswith(prefix):
                continue
            with contextlib.suppress(CapsaError):
                if not job.state.ended:
                    self.bc.jobs.stop(job.id, 1)
                if not keep_ended:
                    self.bc.jobs.remove(job.id, force=True)

    def _run_job(self, ctx: Context, scratch: str, argv: list[str], env: dict[str, str], label: str,
                 log: BuildLog) -> None:
        ref = ctx.resource_id
        record = ImageRecord(ref=f"runtime-build:{ref}", digest="", source="runtime-build", config={}, layers=[],
                             chain=[], top_snapshot=scratch, size=0, created_ns=time.time_ns())
        rootfs = JobRootfs(image=record, snapshot=scratch, mounts=self.sn.mounts(scratch))
        job_env = {"PATH": DEFAULT_PATH, "HOME": "/root", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive",
                   **env}
        job = self.bc.jobs.run(RunRequest(command=tuple(argv), env=job_env, workdir="/", network="host",
                                          name=f"runtime-build/{ref}/{label}", timeout=self.bc.step_timeout),
                               rootfs=rootfs)
        ctx.progress(job_id=job.id)  # for watchers; recovery finds jobs by name
        log.line(f"    (build job {job.short_id})")
        for chunk in self.bc.jobs.logs(job.id, follow=True, stop=ctx.cancel):
            log.write(chunk.data)
        if ctx.cancel.is_set():
            with contextlib.suppress(CapsaError):
                self.bc.jobs.stop(job.id, 1)
            raise Canceled(f"build of {ref} interrupted during {label}")
        final = self.bc.jobs.wait_ended(job.id, timeout=30)
        if final.state != JobState.COMPLETED:
            how = f"exit code {final.exit_code}" if final.exit_code is not None else final.state.value
            raise Abort(FailedPrecondition(
                f"{label} failed ({final.state.value}, {how}{': ' + final.reason if final.reason else ''});"
                f" its output is above and in `capsa logs {final.short_id}`"))
        with contextlib.suppress(CapsaError):
            self.bc.jobs.remove(job.id)

    # -- register ---------------------------------------------------------------------------------
    def register(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        spec = RuntimeSpec.model_validate(req["spec"])
        base, built = req["base"], req["built"]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        layers = [*base["layers"], *(_layer_json_from(b) for b in built)]
        config = _config(spec, req["spec_hash"], base, built, now)
        config_bytes = json.dumps(config, separators=(",", ":")).encode()
        config_info = self.pc.content.put_bytes(config_bytes, media_type=OCI_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_CONFIG, "digest": str(config_info.digest), "size": len(config_bytes)},
                    "layers": [{"mediaType": la["media_type"], "digest": la["digest"], "size": int(la["size"])}
                               for la in layers]}
        manifest_bytes = json.dumps(manifest, indent=2).encode()
        manifest_info = self.pc.content.put_bytes(manifest_bytes, media_type=OCI_MANIFEST)
        chain = [*base["chain"], *(b["key"] for b in built)]
        unpacked = 0
        for key in chain:
            with contextlib.suppress(CapsaError):
                unpacked += self.sn.usage(key).size
        old = self.pc.images.find(image_ref(spec.ref))
        rec = ImageRecord(ref=image_ref(spec.ref), digest=str(manifest_info.digest), source="runtime",
                          platform=f"linux/{config['architecture']}", config={**config, "_digest": str(config_info.digest)},
                          layers=layers, chain=chain, top_snapshot=chain[-1], size=sum(int(la["size"]) for la in layers),
                          created_ns=time.time_ns(), unpacked_size=unpacked)
        self.pc.images.put(rec)
        if old is not None and old.digest != rec.digest and not self.pc.images.refs_for_digest(old.digest):
            self.drop_chain(old.chain)
        self.log(ctx.run_id).line(f"==> registered {rec.ref} {rec.digest} ({len(layers)} layers, {rec.size} bytes)")
        return {"image": rec.to_dict(), "up_to_date": False}

    def drop_chain(self, chain: list[str]) -> None:
        """Snapshots of a removed or replaced runtime, top-down, while no job or image stands on them.

        A key in any image's chain stops the walk: chains share prefixes (a runtime's base image,
        a runtime built on this one), and everything below a shared key is shared too.
        """
        keep = {key for rec in self.pc.images.list() for key in rec.chain}
        for key in reversed(chain):
            if key in keep:
                break
            try:
                self.sn.remove(key)
            except NotFound:
                continue
            except CapsaError:
                break

    # -- the end ----------------------------------------------------------------------------------
    def cleanup(self, ctx: Context, info: RunInfo) -> None:
        """Whatever the outcome: no scratch snapshot or build job of this run stays behind."""
        if info.state in ("failed", "canceled"):
            self._reap(ctx, keep_ended=True)  # a failed job stays listed, for its logs
            self.log(ctx.run_id).line(f"==> build {info.state}: {info.error_message or ''}".rstrip(": "))
        prefix = f"extract-runtime-{ctx.run_id}-"
        for snap in self.sn.walk():
            if snap.key.startswith(prefix):
                with contextlib.suppress(CapsaError):
                    self.sn.remove(snap.key)

def runtime_labels(rec: ImageRecord) -> dict[str, str]:
    labels = (rec.config.get("config") or {}).get("Labels") or {}
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def _layer_json(layer: LayerRef) -> dict[str, Any]:
    return {"digest": layer.digest, "size": layer.size, "media_type": layer.media_type}


def _layer_json_from(built: dict[str, Any]) -> dict[str, Any]:
    return {"digest": built["digest"], "size": int(built["size"]), "media_type": built["media_type"]}


def _config(spec: RuntimeSpec, spec_hash: str, base: dict[str, Any], built: list[dict[str, Any]],
            now: str) -> dict[str, Any]:
    base_config = base.get("config") or {}
    inner = dict(base_config.get("config") or {})
    env: dict[str, str] = {}
    for item in inner.get("Env") or []:
        k, _, v = str(item).partition("=")
        env[k] = v
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(spec.env)
    labels = {**(inner.get("Labels") or {}), LABELS["name"]: spec.name, LABELS["version"]: spec.version,
              LABELS["spec_hash"]: spec_hash, LABELS["spec"]: json.dumps(spec.canonical(), sort_keys=True)}
    if spec.description:
        labels[LABELS["description"]] = spec.description
    inner.update({"Env": [f"{k}={v}" for k, v in env.items()], "Labels": labels})
    if spec.entrypoint is not None:
        inner["Entrypoint"] = list(spec.entrypoint)
    if spec.cmd is not None:
        inner["Cmd"] = list(spec.cmd)
    if spec.workdir:
        inner["WorkingDir"] = spec.workdir
    history = [*base.get("history", []), *({"created": now, "created_by": b["created_by"]} for b in built)]
    return {"created": now, "architecture": base_config.get("architecture") or host_architecture(),
            "os": base_config.get("os") or "linux", "config": inner,
            "rootfs": {"type": "layers", "diff_ids": [*base["diff_ids"], *(b["digest"] for b in built)]},
            "history": history}

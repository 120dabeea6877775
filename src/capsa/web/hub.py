"""One :class:`CapsaClient` per node of the client config, plus the short caches pages share.

gRPC calls block, so every call goes through :meth:`Node.call` which runs it in Starlette's thread
pool; the event loop never waits on the network. ListJobs has no paging yet (another branch adds
``limit``/``page_token``): the whole list is fetched once and kept for ``JOBS_TTL`` seconds, so a
burst of page views, filter keystrokes and live refreshes costs one RPC per second per node.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from capsa.api.client import CapsaClient
from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from capsa.config import ClientConfig, NodeConfig
from capsa.errors import NotFound
from capsa.pki import Role

__all__ = ["JOBS_TTL", "Hub", "Node"]

JOBS_TTL = 1.0
T = TypeVar("T")


@dataclass
class _JobsCache:
    jobs: list[pb.Job] | None = None
    fetched_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    refreshing: bool = False
    last_duration: float = 0.0


class Node:
    """A daemon the dashboard talks to, with the role of the config's client certificate."""

    def __init__(self, name: str, config: NodeConfig, *, client: CapsaClient | None = None) -> None:
        self.name = name
        self.address = config.address
        self.role: Role = config.role
        self.client = client if client is not None else CapsaClient(config, timeout=30)
        self._jobs = _JobsCache()
        self._cached: dict[str, tuple[float, Any]] = {}

    @property
    def can_change(self) -> bool:
        """Developers and above may stop, remove and cancel; readers only look."""
        return self.role.allows(Role.DEVELOPER)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await run_in_threadpool(fn, *args, **kwargs)

    def jobs_blocking(self, *, max_age: float = JOBS_TTL) -> list[pb.Job]:
        """Every job (ended ones too), refreshed when older than ``max_age`` seconds.

        Stale-while-revalidate: once a list is cached, a request finding it stale gets it at once and
        starts one background refresh, so no page view waits for the ListJobs of thousands of jobs
        (about a second at 5,000); only a view before the first list arrived does (``warm`` fetches
        it when ``capsa web`` starts). The lock makes concurrent first requests share one ListJobs.
        """
        cache = self._jobs
        # A list that takes long to fetch is refreshed less often, so that watching the dashboard never
        # keeps the daemon busy listing jobs more than about a third of the time.
        max_age = max(max_age, 3 * cache.last_duration)
        with cache.lock:
            if cache.jobs is None:
                self._fetch_locked()
                assert cache.jobs is not None
                return cache.jobs
            if time.monotonic() - cache.fetched_at > max_age:
                self._refresh_in_background_locked()
            return cache.jobs

    def _fetch_locked(self) -> None:
        cache = self._jobs
        t0 = time.monotonic()
        cache.jobs = self.client.list_jobs(all=True)
        cache.fetched_at = time.monotonic()
        cache.last_duration = cache.fetched_at - t0

    def _refresh_in_background_locked(self) -> None:
        if not self._jobs.refreshing:
            self._jobs.refreshing = True
            threading.Thread(target=self._refresh, name="capsa-web-jobs", daemon=True).start()

    def _refresh(self) -> None:
        cache = self._jobs
        try:
            t0 = time.monotonic()
            jobs = self.client.list_jobs(all=True)
            with cache.lock:
                cache.jobs, cache.fetched_at = jobs, time.monotonic()
                cache.last_duration = cache.fetched_at - t0
        except Exception:   # the next request retries; pages keep showing the last good list meanwhile
            pass
        finally:
            cache.refreshing = False

    def warm(self) -> None:
        """Fetch the job list once in the background, so the first page view finds it ready."""
        threading.Thread(target=self._warm, name="capsa-web-warm", daemon=True).start()

    def _warm(self) -> None:
        try:
            self.jobs_blocking()
        except Exception:   # the daemon may be down at start; pages report it when it matters
            pass

    async def jobs(self, *, max_age: float = JOBS_TTL) -> list[pb.Job]:
        return await run_in_threadpool(self.jobs_blocking, max_age=max_age)

    def cached_blocking(self, key: str, ttl: float, fn: Callable[[], T]) -> T:
        """``fn()``, reused for ``ttl`` seconds: for views that would otherwise repeat many RPCs per refresh."""
        hit = self._cached.get(key)
        if hit is not None and time.monotonic() - hit[0] < ttl:
            return hit[1]  # type: ignore[no-any-return]
        value = fn()
        self._cached[key] = (time.monotonic(), value)
        return value

    def invalidate_jobs(self) -> None:
        """After a change made from the dashboard: refresh now, in the background (live views follow)."""
        with self._jobs.lock:
            self._jobs.fetched_at = 0.0
            self._refresh_in_background_locked()

    def close(self) -> None:
        self.client.close()


class Hub:
    """The nodes of one client config, in config order (the default node first)."""

    def __init__(self, nodes: list[Node]) -> None:
        if not nodes:
            raise NotFound("the client config lists no nodes")
        self.nodes: dict[str, Node] = {n.name: n for n in nodes}

    @classmethod
    def from_config(cls, config: ClientConfig, only: str | None = None) -> Hub:
        names = [only] if only else list(config.nodes)
        if not only and config.default_node:
            names.remove(config.default_node)
            names.insert(0, config.default_node)
        return cls([Node(name, config.select(name)) for name in names])

    @property
    def default(self) -> Node:
        return next(iter(self.nodes.values()))

    def get(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise NotFound(f"unknown node {name!r}") from None

    def close(self) -> None:
        for node in self.nodes.values():
            node.close()

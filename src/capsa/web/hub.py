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
    jobs: list[pb.Job] = field(default_factory=list)
    fetched_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Node:
    """A daemon the dashboard talks to, with the role of the config's client certificate."""

    def __init__(self, name: str, config: NodeConfig, *, client: CapsaClient | None = None) -> None:
        self.name = name
        self.address = config.address
        self.role: Role = config.role
        self.client = client if client is not None else CapsaClient(config, timeout=30)
        self._jobs = _JobsCache()

    @property
    def can_change(self) -> bool:
        """Developers and above may stop, remove and cancel; readers only look."""
        return self.role.allows(Role.DEVELOPER)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await run_in_threadpool(fn, *args, **kwargs)

    def jobs_blocking(self, *, max_age: float = JOBS_TTL) -> list[pb.Job]:
        """Every job (ended ones too), at most ``max_age`` seconds old.

        The lock makes concurrent requests share one in-flight ListJobs instead of each
        starting their own when the cache expires.
        """
        cache = self._jobs
        with cache.lock:
            if time.monotonic() - cache.fetched_at > max_age:
                cache.jobs = self.client.list_jobs(all=True)
                cache.fetched_at = time.monotonic()
            return cache.jobs

    async def jobs(self, *, max_age: float = JOBS_TTL) -> list[pb.Job]:
        return await run_in_threadpool(self.jobs_blocking, max_age=max_age)

    def invalidate_jobs(self) -> None:
        """After a change made from the dashboard, so the next view shows it at once."""
        self._jobs.fetched_at = 0.0

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

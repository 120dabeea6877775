"""A small typed client for etcd's v3 API, spoken as JSON through etcd's gRPC gateway.

Why not a PyPI client: ``etcd3`` is unmaintained and pins an old protobuf; ``etcd3gw`` would do but
adds futurist/pbr and hides the transaction and election calls we need behind loose dicts. Eight
gateway paths (range, put, deleterange, txn, lease grant/keepalive/revoke, watch, election
campaign/leader/resign) over urllib3, which capsa already depends on, are all the cluster uses
(ADR 0012). Keys and values are bytes on the wire (base64 in JSON); 64-bit integers are strings.

Every call tries the endpoints in turn, starting with the last one that answered, so losing one
member of three costs one failed connect, not an outage.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import ssl
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import urllib3

from capsa.errors import CapsaError, FailedPrecondition, Unavailable

__all__ = ["Compare", "EtcdClient", "EtcdTLS", "KeyValue", "Op", "WatchEvent", "prefix_end"]

_CONNECT_S = 2.0


@dataclass(frozen=True)
class EtcdTLS:
    """PEM material for mutual TLS with etcd: capsa's CA and a client certificate it issued."""

    ca_pem: str
    cert_pem: str
    key_pem: str = field(repr=False)


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    def json(self) -> Any:
        return json.loads(self.value)


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["PUT", "DELETE"]
    kv: KeyValue


@dataclass(frozen=True)
class Compare:
    """One guard of a transaction: ``target`` of ``key`` compared with ``value``."""

    key: str
    target: Literal["VERSION", "CREATE", "MOD", "VALUE", "LEASE"]
    result: Literal["EQUAL", "GREATER", "LESS", "NOT_EQUAL"]
    value: int | bytes

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": _b64(self.key), "target": self.target, "result": self.result}
        field_name = {"VERSION": "version", "CREATE": "create_revision", "MOD": "mod_revision",
                      "VALUE": "value", "LEASE": "lease"}[self.target]
        out[field_name] = _b64(self.value) if isinstance(self.value, bytes) else str(self.value)
        return out

    @staticmethod
    def missing(key: str) -> Compare:
        return Compare(key, "VERSION", "EQUAL", 0)

    @staticmethod
    def exists(key: str) -> Compare:
        return Compare(key, "VERSION", "GREATER", 0)

    @staticmethod
    def unchanged(kv: KeyValue) -> Compare:
        return Compare(kv.key, "MOD", "EQUAL", kv.mod_revision)


@dataclass(frozen=True)
class Op:
    """One write of a transaction: a put (optionally under a lease) or a delete."""

    kind: Literal["put", "delete"]
    key: str
    value: bytes = b""
    lease: int = 0

    @staticmethod
    def put(key: str, value: bytes | str | dict[str, Any], lease: int = 0) -> Op:
        data = value if isinstance(value, bytes) else (value.encode() if isinstance(value, str) else
                                                        json.dumps(value, sort_keys=True).encode())
        return Op("put", key, data, lease)

    @staticmethod
    def delete(key: str) -> Op:
        return Op("delete", key)

    def wire(self) -> dict[str, Any]:
        if self.kind == "put":
            body: dict[str, Any] = {"key": _b64(self.key), "value": _b64(self.value)}
            if self.lease:
                body["lease"] = str(self.lease)
            return {"request_put": body}
        return {"request_delete_range": {"key": _b64(self.key)}}


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: str) -> str:
    """The range end that selects every key starting with ``prefix`` (its last byte plus one)."""
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(key=_unb64(raw.get("key")).decode(), value=_unb64(raw.get("value")),
                    create_revision=int(raw.get("create_revision", 0)), mod_revision=int(raw.get("mod_revision", 0)),
                    version=int(raw.get("version", 0)), lease=int(raw.get("lease", 0)))


def _shutdown_on(stop: threading.Event, done: threading.Event, response: Any) -> None:
    """Unblock ``response``'s pending read as soon as ``stop`` is set (until the watch is ``done``)."""
    while not done.wait(0.1):
        if stop.is_set():
            # The watch may have ended and closed the response since ``done`` was looked at: then
            # there is no read left to unblock (urllib3 says so with ValueError or RuntimeError).
            with contextlib.suppress(ValueError, RuntimeError, OSError):
                response.shutdown()
            return


def _ssl_context(tls: EtcdTLS) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=tls.ca_pem)
    # load_cert_chain only reads files: write them privately, load, and remove them at once.
    with tempfile.TemporaryDirectory(prefix="capsa-etcd-") as tmp:
        cert, key = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
        cert.write_text(tls.cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(tls.key_pem)
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


class EtcdClient:
    """etcd v3 over the JSON gateway; thread-safe (urllib3 pools per endpoint)."""

    def __init__(self, endpoints: Sequence[str], *, tls: EtcdTLS | None = None, timeout: float = 5.0) -> None:
        if not endpoints:
            raise FailedPrecondition("no etcd endpoints configured (cluster.etcd)")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        context = _ssl_context(tls) if tls is not None else None
        self._http = urllib3.PoolManager(maxsize=16, ssl_context=context, retries=False)
        self._preferred = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.clear()

    # -- transport ----------------------------------------------------------------------------
    def _order(self) -> list[str]:
        with self._lock:
            start = self._preferred
        return self.endpoints[start:] + self.endpoints[:start]

    def _post(self, path: str, body: dict[str, Any], *, timeout: float | None = None,
              stream: bool = False, resend: bool = True) -> Any:
        """``resend=False``: only a request that never reached a member is tried on the next one; one that may
        have been received (it timed out or broke while waiting for the answer) raises instead."""
        errors: list[str] = []
        for endpoint in self._order():
            try:
                response = self._http.request(
                    "POST", endpoint + path, body=json.dumps(body).encode(),
                    headers={"Content-Type": "application/json"}, preload_content=not stream,
                    timeout=urllib3.Timeout(connect=_CONNECT_S, read=timeout if timeout is not None else self.timeout))
            except urllib3.exceptions.HTTPError as exc:
                errors.append(f"{endpoint}: {type(exc).__name__}")
                if not resend and not isinstance(exc, (urllib3.exceptions.NewConnectionError,
                                                       urllib3.exceptions.ConnectTimeoutError)):
                    break
                continue
            if response.status == 503 or response.status == 502:   # a member without quorum or leader
                errors.append(f"{endpoint}: HTTP {response.status}")
                response.release_conn()
                continue
            with self._lock:
                self._preferred = self.endpoints.index(endpoint)
            if stream:
                return response
            data = json.loads(response.data or b"{}")
            if response.status != 200 or "error" in data and "result" not in data:
                raise FailedPrecondition(f"etcd {path}: {data.get('message') or data.get('error') or response.status}")
            return data
        raise Unavailable(f"no etcd endpoint answered {path}: {'; '.join(errors)}")

    # -- key-value ------------------------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        kvs = self._post("/v3/kv/range", {"key": _b64(key)}).get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    def range(self, prefix: str, *, keys_only: bool = False) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` and the store revision they were read at."""
        data = self._post("/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                                           "keys_only": keys_only})
        return [_kv(kv) for kv in data.get("kvs") or []], int(data["header"]["revision"])

    def count(self, prefix: str) -> int:
        data = self._post("/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                                           "count_only": True})
        return int(data.get("count", 0))

    def put(self, key: str, value: bytes | str | dict[str, Any], *, lease: int = 0) -> int:
        op = Op.put(key, value, lease).wire()["request_put"]
        return int(self._post("/v3/kv/put", op)["header"]["revision"])

    def delete(self, key: str, *, prefix: bool = False) -> int:
        body = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        return int(self._post("/v3/kv/deleterange", body).get("deleted", 0))

    def txn(self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> bool:
        """Apply ``success`` if every guard holds, else ``failure``; True when the guards held."""
        data = self._post("/v3/kv/txn", {"compare": [c.wire() for c in compare],
                                         "success": [o.wire() for o in success],
                                         "failure": [o.wire() for o in failure]})
        return bool(data.get("succeeded", False))

    # -- leases ---------------------------------------------------------------------------------
    def grant(self, ttl: int) -> int:
        return int(self._post("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def keepalive(self, lease: int, *, timeout: float | None = None) -> int:
        """Renew ``lease`` once; its remaining TTL, 0 when it has already expired."""
        data = self._post("/v3/lease/keepalive", {"ID": str(lease)}, timeout=timeout)
        return int((data.get("result") or {}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        try:
            self._post("/v3/lease/revoke", {"ID": str(lease)})
        except FailedPrecondition:
            pass   # already expired: the goal is reached

    # -- watch ----------------------------------------------------------------------------------
    def watch(self, prefix: str, *, start_revision: int, stop: threading.Event,
              idle_s: float = 30.0) -> Iterator[list[WatchEvent]]:
        """Batches of events under ``prefix`` from ``start_revision``, until ``stop`` is set.

        One streamed request per connection; a member silent for ``idle_s`` (a half-open connection)
        is left for another. Reconnects from the last revision seen, so no event is lost or repeated.
        ``stop`` ends a blocked read at once (the response is shut down from a helper thread).
        Raises FailedPrecondition when etcd has compacted the revision away: the caller re-reads.
        """
        next_rev = start_revision
        while not stop.is_set():
            body = {"create_request": {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                                       "start_revision": str(next_rev)}}
            try:
                response = self._post("/v3/watch", body, timeout=idle_s, stream=True)
            except Unavailable:
                stop.wait(0.2)
                continue
            done = threading.Event()
            threading.Thread(target=_shutdown_on, args=(stop, done, response), daemon=True,
                             name="etcd-watch-stop").start()
            decoder, buffer = json.JSONDecoder(), ""
            try:
                while not stop.is_set():
                    chunk = response.read1(65536)
                    if not chunk:
                        break
                    buffer += chunk.decode()
                    while buffer.strip():
                        try:
                            message, end = decoder.raw_decode(buffer.lstrip())
                        except ValueError:
                            break   # an incomplete message: read more
                        buffer = buffer.lstrip()[end:]
                        result = message.get("result") or {}
                        if "error" in message:
                            raise FailedPrecondition(f"etcd watch: {message['error']}")
                        if int(result.get("compact_revision", 0)):
                            raise FailedPrecondition(f"etcd watch: revision {next_rev} was compacted")
                        events = [WatchEvent("DELETE" if e.get("type") == "DELETE" else "PUT", _kv(e["kv"]))
                                  for e in result.get("events") or []]
                        if events:
                            next_rev = events[-1].kv.mod_revision + 1
                            yield events
            except (urllib3.exceptions.HTTPError, OSError, ValueError):
                pass   # the member went away, went quiet, or we were stopped: reconnect from next_rev
            finally:
                done.set()
                # Close before releasing: a stopped watch's socket was shut down for reading, and a pooled
                # half-shut connection would hang or break the next request that reuses it.
                response.close()
                response.release_conn()

    # -- election -------------------------------------------------------------------------------
    def campaign(self, name: str, lease: int, value: str, *, timeout: float) -> dict[str, Any] | None:
        """Block up to ``timeout`` s to become leader of ``name``; the leader key, or None on timeout."""
        # Never re-sent to another member after a timeout: the member that received it cancels that campaign and
        # deletes the candidate key (one per lease) — possibly *after* a re-sent campaign adopted the same key,
        # which would then "win" with a key that no longer exists.
        try:
            data = self._post("/v3/election/campaign", {"name": _b64(name), "lease": str(lease),
                                                         "value": _b64(value)}, timeout=timeout, resend=False)
        except Unavailable as exc:
            if "ReadTimeout" in str(exc):
                return None
            raise
        leader = data.get("leader") or {}
        return {"name": leader.get("name", ""), "key": leader.get("key", ""), "rev": leader.get("rev", "0"),
                "lease": leader.get("lease", str(lease))}

    def leader(self, name: str) -> KeyValue | None:
        try:
            data = self._post("/v3/election/leader", {"name": _b64(name)})
        except FailedPrecondition:
            return None   # "election: no leader"
        return _kv(data["kv"]) if data.get("kv") else None

    def resign(self, leader: dict[str, Any]) -> None:
        try:
            self._post("/v3/election/resign", {"leader": leader})
        except CapsaError:
            pass   # its lease is revoked next anyway

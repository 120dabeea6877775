"""Shared pieces of the image e2e tests: a daemon with its own env/config, images, registry pushes, state probes.

Everything here looks at capsa from the outside: the CLI, the registry's own
storage, the daemon's CAPSA_HOME on disk and its SQLite database opened
read-only. Nothing asks capsa what it thinks it did.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import random
import shutil
import sqlite3
import subprocess
import tarfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from capsa.config import ensure_home
from capsa.images.oci import OCI_INDEX, OCI_MANIFEST, ImageConfig
from tests.fixtures.daemon import RunningDaemon, running_daemon
from tests.fixtures.images import Layer, TarBuilder, TestImage, write_oci_layout
from tests.fixtures.servers import RegistryServer

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ACTIVE_STATES = ("queued", "running", "retry_wait")


# -- a daemon with its own environment and server.yaml additions ------------------------------------------


@dataclass
class ImageDaemon(RunningDaemon):
    """A RunningDaemon whose process gets ``extra_env`` (e.g. AWS_* for S3) on top of the test's env."""

    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in super().env.items() if not k.startswith("AWS_")}
        env.update(self.extra_env)
        return env

    @property
    def db_path(self) -> Path:
        return self.home / "capsa.db"

    def cli_ok(self, *args: str, role: str = "admin", timeout: float = 120) -> str:
        res = self.cli(*args, role=role, timeout=timeout)
        assert res.returncode == 0, f"capsa {' '.join(args)} exited {res.returncode}: {res.stderr.decode()}"
        return res.stdout.decode()

    def cli_json(self, *args: str, role: str = "admin") -> Any:
        return json.loads(self.cli_ok(*args, "--json", role=role))

    def popen_cli(self, *args: str, role: str = "admin") -> subprocess.Popen[bytes]:
        from tests.fixtures.daemon import CAPSA

        return subprocess.Popen([*CAPSA, "--config", str(self.home / f"client-{role}.yaml"), *args], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def image_daemon(home: Path, *, env: Mapping[str, str] | None = None, server_yaml: str = "") -> Iterator[ImageDaemon]:
    """A real daemon on a free port; ``server_yaml`` is appended to its generated server.yaml before start."""
    def append_server_yaml(home: Path, port: int) -> None:
        address = f"127.0.0.1:{port}"
        ensure_home(home, address=address, listen=address)  # the bundle the daemon would write at first start
        with open(home / "server.yaml", "a", encoding="utf-8") as f:
            f.write("\n" + server_yaml)

    with running_daemon(home, prepare=append_server_yaml if server_yaml else None, daemon_type=ImageDaemon,
                        extra_env=dict(env or {})) as daemon:
        yield daemon


FAST_RETRY_YAML = "fsm:\n  retry_base_s: 0.05\n  retry_cap_s: 0.4\n  max_attempts: 4\n"


# -- what the daemon left on disk and in its database ------------------------------------------------------


def query(home: Path, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
    """Read capsa.db read-only (the daemon may be running: WAL readers do not block it)."""
    conn = sqlite3.connect(f"file:{home / 'capsa.db'}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return list(conn.execute(sql, params))
    finally:
        conn.close()


def integrity_check(home: Path) -> str:
    return str(query(home, "PRAGMA integrity_check")[0][0])


def ingest_leftovers(home: Path) -> list[str]:
    return sorted(os.listdir(home / "content" / "ingest"))


def ingest_report(home: Path) -> dict[str, str]:
    """Leftover ingests with what their meta.json says (for assertion messages)."""
    out: dict[str, str] = {}
    for name in ingest_leftovers(home):
        meta = home / "content" / "ingest" / name / "meta.json"
        files = sorted(os.listdir(home / "content" / "ingest" / name))
        out[name] = f"{files} {meta.read_text() if meta.exists() else ''}"
    return out


def blob_hexes(home: Path) -> set[str]:
    return set(os.listdir(home / "content" / "blobs" / "sha256"))


def snapshot_rows(home: Path) -> list[sqlite3.Row]:
    return query(home, "SELECT id, key, parent_id, kind, size FROM snapshots ORDER BY id")


def snapshot_keys(home: Path) -> set[str]:
    return {r["key"] for r in snapshot_rows(home)}


def snapshot_dirs(home: Path) -> set[str]:
    """Storage directories of the overlay snapshotter (one per snapshot id, plus trash/new while busy)."""
    return set(os.listdir(home / "snapshots" / "overlay" / "snapshots"))


def active_runs(home: Path) -> list[sqlite3.Row]:
    marks = ",".join("?" * len(ACTIVE_STATES))
    return query(home, f"SELECT * FROM fsm_runs WHERE state IN ({marks})", ACTIVE_STATES)


def runs(home: Path, machine: str) -> list[sqlite3.Row]:
    return query(home, "SELECT * FROM fsm_runs WHERE machine = ? ORDER BY created_at", (machine,))


def layer_dir(home: Path, chain_key: str) -> Path:
    """The overlay storage of one committed layer snapshot."""
    rows = query(home, "SELECT id FROM snapshots WHERE key = ?", (chain_key,))
    assert rows, f"no snapshot {chain_key}"
    return home / "snapshots" / "overlay" / "snapshots" / str(rows[0]["id"]) / "fs"


def one_line_error(res: subprocess.CompletedProcess[bytes]) -> str:
    err = res.stderr.decode()
    assert res.returncode != 0, res.stdout.decode()
    assert "Traceback" not in err, err
    assert err.startswith("capsa: ") and err.count("\n") == 1, repr(err)
    return err


# -- images ------------------------------------------------------------------------------------------------------


def image_with(layers: Sequence[Layer], config: Mapping[str, Any], name: str = "custom") -> TestImage:
    return TestImage(name=name, layers=tuple(layers), config=ImageConfig.model_validate(
        {"architecture": "amd64", "os": "linux", "config": dict(config)}))


def random_layer(seed: int, *, files: int, file_bytes: int, compression: str, prefix: str) -> tuple[Layer, dict[str, str]]:
    """A layer of ``files`` incompressible files; returns it and {path: sha256 hex} of its files."""
    rng = random.Random(seed)
    tar = TarBuilder().dir(prefix)
    digests: dict[str, str] = {}
    for i in range(files):
        data = rng.randbytes(file_bytes)
        name = f"{prefix}/f{i:05d}.bin"
        tar.file(name, data)
        digests[name] = hashlib.sha256(data).hexdigest()
    return Layer(tar.build(), compression), digests


def push_layout(layout: Path, tag: str, registry: RegistryServer, repo_tag: str) -> str:
    """skopeo copy oci:LAYOUT:TAG to the registry; returns the manifest digest the registry reports."""
    skopeo = shutil.which("skopeo")
    assert skopeo, "skopeo is not installed"
    subprocess.run([skopeo, "--insecure-policy", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false",
                    f"oci:{layout}:{tag}", f"docker://{registry.host}/{repo_tag}"],
                   check=True, capture_output=True, timeout=120)
    repo, _, ref = repo_tag.rpartition(":")
    req = urllib.request.Request(f"{registry.url}/v2/{repo}/manifests/{ref}", method="HEAD",
                                 headers={"Accept": ", ".join([OCI_INDEX, OCI_MANIFEST])})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(resp.headers["Docker-Content-Digest"])


def push_image(tmp: Path, image: TestImage, registry: RegistryServer, repo_tag: str) -> str:
    layout = tmp / f"layout-{image.manifest_digest.hex[:12]}"
    write_oci_layout(layout, {"t": image})
    digest = push_layout(layout, "t", registry, repo_tag)
    assert digest == image.manifest_digest
    return digest


def registry_blob_file(registry: RegistryServer, digest: str) -> Path:
    hex_ = digest.removeprefix("sha256:")
    return registry.root / "docker" / "registry" / "v2" / "blobs" / "sha256" / hex_[:2] / hex_ / "data"


def expected_tree(layers: Sequence[bytes]) -> dict[str, str]:
    """An independent model of applying OCI layers: {"/path": "d"|"f"|"l"} after whiteouts.

    Per image-spec layer.md: a layer's opaque markers and whiteouts hide what *lower*
    layers put there, never the layer's own entries.
    """
    tree: dict[str, str] = {}
    for blob in layers:
        with tarfile.open(fileobj=__import__("io").BytesIO(blob)) as tar:
            members = tar.getmembers()
        own: dict[str, str] = {}
        for m in members:
            path = "/" + m.name.strip("/").removeprefix("./")
            parent, _, base = path.rpartition("/")
            if base == ".wh..wh..opq":
                for p in [p for p in tree if p.startswith(parent + "/")]:
                    del tree[p]
            elif base.startswith(".wh."):
                gone = f"{parent}/{base[4:]}"
                for p in [p for p in tree if p == gone or p.startswith(gone + "/")]:
                    del tree[p]
            else:
                own[path] = "d" if m.isdir() else "l" if m.issym() else "f"
        for path, kind in own.items():
            parts = path.strip("/").split("/")
            for i in range(1, len(parts)):
                tree.setdefault("/" + "/".join(parts[:i]), "d")
            tree[path] = kind
    return tree


# -- a recording, fault-injecting HTTP proxy in front of a registry --------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    at: float
    status: int = 0


Fault = Callable[["ProxyHandler", Seen], bool]  # True: the fault answered the request itself


class RegistryProxy:
    """A plain-HTTP proxy on 127.0.0.1 that forwards to ``upstream`` and records every request.

    ``fault`` may answer a request itself (500s, stalls); ``throttle_s`` sleeps per
    64 KiB of blob body so pulls last long enough to overlap.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream  # "127.0.0.1:PORT"
        self.seen: list[Seen] = []
        self.fault: Fault | None = None
        self.throttle_s = 0.0
        self.lock = threading.Lock()
        proxy = self

        class Handler(ProxyHandler):
            owner = proxy

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def requests(self, method: str = "GET", contains: str = "") -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.method == method and contains in s.path]

    def reset(self) -> None:
        with self.lock:
            self.seen.clear()
        self.fault = None
        self.throttle_s = 0.0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class ProxyHandler(BaseHTTPRequestHandler):
    owner: RegistryProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def reply(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self, method: str) -> None:
        seen = Seen(method, self.path, time.monotonic())
        with self.owner.lock:
            self.owner.seen.append(seen)
        fault = self.owner.fault
        if fault is not None and fault(self, seen):
            return
        conn = http.client.HTTPConnection(self.owner.upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range", "authorization")}
        conn.request(method, self.path, headers=headers)
        resp = conn.getresponse()
        seen.status = resp.status
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() in ("content-type", "content-length", "docker-content-digest", "content-range",
                             "etag", "docker-distribution-api-version", "accept-ranges", "www-authenticate"):
                self.send_header(k, v)
        self.end_headers()
        try:
            if method != "HEAD":
                while chunk := resp.read(64 * 1024):
                    self.wfile.write(chunk)
                    if self.owner.throttle_s and "/blobs/" in self.path:
                        time.sleep(self.owner.throttle_s)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            conn.close()

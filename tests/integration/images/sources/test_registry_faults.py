"""The registry client against a scripted fake registry: auth flows, faults, Range, redirects.

The fake is a ``ThreadingHTTPServer`` on 127.0.0.1 whose behaviour each test sets;
it records every request so tests can assert what the client actually sent.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from capsa.errors import (
    ChecksumMismatch,
    FailedPrecondition,
    LimitExceeded,
    NotFound,
    Unauthorized,
    Unavailable,
    is_retryable,
)
from capsa.images.content import ContentStore
from capsa.images.oci import MAX_MANIFEST_BYTES, OCI_LAYER_TAR, OCI_MANIFEST, sha256_digest
from capsa.images.reference import parse_reference
from capsa.images.sources.base import BlobDescriptor
from capsa.images.sources.registry import (
    Credentials,
    RegistryClient,
    RegistryConfig,
    RegistrySource,
    load_auth_file,
)
from capsa.state.db import Database
from tests.fixtures.servers import free_port

LAYER = bytes(range(256)) * 4096  # 1 MiB
LAYER_DIGEST = sha256_digest(LAYER)
CONFIG = json.dumps(
    {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [LAYER_DIGEST]},
    }
).encode()
CONFIG_DIGEST = sha256_digest(CONFIG)
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": CONFIG_DIGEST,
            "size": len(CONFIG),
        },
        "layers": [{"mediaType": OCI_LAYER_TAR, "digest": LAYER_DIGEST, "size": len(LAYER)}],
    }
).encode()
MANIFEST_DIGEST = sha256_digest(MANIFEST)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Reply = tuple[int, dict[str, str], bytes]


@dataclass
class Fake:
    port: int
    requests: list[Request] = field(default_factory=list)
    # route(request) -> reply, or None for the default registry behaviour below
    route: Callable[[Request], Reply | None] = lambda req: None
    honour_range: bool = True
    manifest_digest_header: str = MANIFEST_DIGEST

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def default(self, req: Request) -> Reply:
        path = req.path.split("?")[0]
        if path == "/v2/":
            return 200, {}, b"{}"
        if path == f"/v2/team/app/manifests/{MANIFEST_DIGEST}" or path == "/v2/team/app/manifests/1.0":
            return (
                200,
                {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": self.manifest_digest_header},
                MANIFEST,
            )
        if path == f"/v2/team/app/blobs/{CONFIG_DIGEST}":
            return 200, {}, CONFIG
        if path == f"/v2/team/app/blobs/{LAYER_DIGEST}":
            match = re.match(r"bytes=(\d+)-$", req.headers.get("Range", ""))
            if match and self.honour_range:
                start = int(match.group(1))
                return 206, {"Content-Range": f"bytes {start}-{len(LAYER) - 1}/{len(LAYER)}"}, LAYER[start:]
            return 200, {}, LAYER
        return (
            404,
            {"Content-Type": "application/json"},
            b'{"errors":[{"code":"NAME_UNKNOWN","message":"no such repo"}]}',
        )


@pytest.fixture
def fake() -> Iterator[Fake]:
    state = Fake(port=0)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            req = Request(self.command, self.path, {k: v for k, v in self.headers.items()}, body)
            state.requests.append(req)
            status, headers, payload = state.route(req) or state.default(req)
            self.send_response(status)
            headers.setdefault("Content-Length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ContentStore]:
    db = Database(tmp_path / "capsa.db")
    yield ContentStore(tmp_path / "content", db)
    db.close()


def _layer(fake: Fake) -> BlobDescriptor:
    return BlobDescriptor(
        media_type=OCI_LAYER_TAR,
        size=len(LAYER),
        digest=LAYER_DIGEST,
        locator=f"{fake.host}/team/app@{LAYER_DIGEST}",
    )


def test_resolve_from_fake_registry(fake: Fake) -> None:
    image = RegistrySource().resolve(parse_reference(f"{fake.host}/team/app:1.0"))
    assert image.manifest_digest == MANIFEST_DIGEST and image.config_digest == CONFIG_DIGEST
    assert fake.requests[0].headers["Accept"].startswith("application/vnd.oci.image.index.v1+json")


def test_server_errors_are_unavailable_and_retryable(fake: Fake) -> None:
    fake.route = lambda req: (500, {}, b"boom")
    with pytest.raises(Unavailable, match="HTTP 500") as err:
        RegistrySource().resolve(parse_reference(f"{fake.host}/team/app:1.0"))
    assert is_retryable(err.value)
    fake.route = lambda req: (429, {}, b"")
    with pytest.raises(Unavailable, match="HTTP 429"):
        RegistrySource().resolve(parse_reference(f"{fake.host}/team/app:1.0"))


def test_unreachable_registry_is_unavailable() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(Unavailable, match="cannot reach"):
        RegistrySource().resolve(parse_reference(f"127.0.0.1:{port}/team/app:1.0"))


def test_denied_and_missing_map_to_unauthorized_and_not_found(fake: Fake) -> None:
    fake.route = lambda req: (
        403,
        {},
        b'{"errors":[{"code":"DENIED","message":"requested access is denied"}]}',
    )
    with pytest.raises(Unauthorized, match="DENIED: requested access is denied"):
        RegistrySource().resolve(parse_reference(f"{fake.host}/team/app:1.0"))
    fake.route = lambda req: None
    with pytest.raises(NotFound, match="NAME_UNKNOWN"):
        RegistrySource().resolve(parse_reference(f"{fake.host}/other/app:1.0"))


def _bearer_route(fake: Fake, *, want_basic: str | None = None, refresh_token: str | None = None) -> None:
    def route(req: Request) -> Reply | None:
        path, _, query = req.path.partition("?")
        if path == "/token":
            params = dict(urllib.parse.parse_qsl(query if req.method == "GET" else req.body.decode()))
            if params.get("service") != "fake-registry" or params.get("scope") != "repository:team/app:pull":
                return 400, {}, b"bad token request"
            if want_basic is not None and req.headers.get("Authorization") != "Basic " + want_basic:
                return 401, {}, b""
            if refresh_token is not None and (
                req.method != "POST"
                or params.get("refresh_token") != refresh_token
                or params.get("grant_type") != "refresh_token"
            ):
                return 401, {}, b""
            return (
                200,
                {"Content-Type": "application/json"},
                json.dumps({"access_token": "tok-123", "expires_in": 300}).encode(),
            )
        if req.headers.get("Authorization") != "Bearer tok-123":
            challenge = (
                f'Bearer realm="http://{fake.host}/token",service="fake-registry",'
                'scope="repository:team/app:pull"'
            )
            return 401, {"WWW-Authenticate": challenge}, b'{"errors":[{"code":"UNAUTHORIZED"}]}'
        return None

    fake.route = route


def test_bearer_challenge_is_answered_with_an_anonymous_token(fake: Fake, store: ContentStore) -> None:
    _bearer_route(fake)
    source = RegistrySource()
    image = source.resolve(parse_reference(f"{fake.host}/team/app:1.0"))
    assert image.manifest_digest == MANIFEST_DIGEST
    token_requests = [r for r in fake.requests if r.path.startswith("/token")]
    assert len(token_requests) == 1  # cached for the config and the next calls
    assert "Authorization" not in token_requests[0].headers
    with store.writer("layer", expected=LAYER_DIGEST) as w:
        source.fetch_blob(_layer(fake), w)
        w.commit(len(LAYER))
    assert len([r for r in fake.requests if r.path.startswith("/token")]) == 1


def test_token_request_carries_basic_credentials_from_an_auth_file(fake: Fake, tmp_path: Path) -> None:
    secret = base64.b64encode(b"alice:s3cret").decode()
    auth_file = tmp_path / "config.json"
    auth_file.write_text(
        json.dumps({"auths": {fake.host: {"auth": secret}, "https://index.docker.io/v1/": {"auth": secret}}})
    )
    assert load_auth_file(auth_file)[fake.host] == Credentials(username="alice", password="s3cret")
    hub = RegistryConfig(auth_file=auth_file).credentials_for("registry-1.docker.io")
    assert hub is not None and hub.username == "alice"
    _bearer_route(fake, want_basic=secret)
    with pytest.raises(Unauthorized, match="refused anonymously"):
        RegistrySource().resolve(parse_reference(f"{fake.host}/team/app:1.0"))
    image = RegistrySource(RegistryConfig(auth_file=auth_file)).resolve(
        parse_reference(f"{fake.host}/team/app:1.0")
    )
    assert image.manifest_digest == MANIFEST_DIGEST
    token = next(r for r in fake.requests if r.path.startswith("/token") and "Authorization" in r.headers)
    assert "account=alice" in token.path


def test_identity_token_is_exchanged_with_an_oauth2_refresh_grant(fake: Fake) -> None:
    _bearer_route(fake, refresh_token="refresh-xyz")
    config = RegistryConfig(credentials={fake.host: Credentials(identity_token="refresh-xyz")})
    assert (
        RegistrySource(config).resolve(parse_reference(f"{fake.host}/team/app:1.0")).manifest_digest
        == MANIFEST_DIGEST
    )


def test_basic_challenge_is_answered_only_with_credentials(fake: Fake) -> None:
    good = "Basic " + base64.b64encode(b"bob:pw").decode()
    fake.route = lambda req: (
        None
        if req.headers.get("Authorization") == good
        else (401, {"WWW-Authenticate": 'Basic realm="fake"'}, b"")
    )
    with pytest.raises(Unauthorized, match="no usable credentials"):
        RegistrySource().resolve(parse_reference(f"{fake.host}/team/app:1.0"))
    config = RegistryConfig(credentials={fake.host: Credentials(username="bob", password="pw")})
    assert (
        RegistrySource(config).resolve(parse_reference(f"{fake.host}/team/app:1.0")).manifest_digest
        == MANIFEST_DIGEST
    )


def test_token_realm_over_plain_http_to_a_remote_host_is_refused(fake: Fake) -> None:
    fake.route = lambda req: (
        401,
        {"WWW-Authenticate": 'Bearer realm="http://auth.example.com/token",service="x"'},
        b"",
    )
    with pytest.raises(FailedPrecondition, match=r"refusing http://auth.example.com.*insecure"):
        RegistrySource().resolve(parse_reference(f"{fake.host}/team/app:1.0"))
    assert not is_retryable(FailedPrecondition("x"))


def test_redirect_to_plain_http_remote_host_is_refused(fake: Fake, store: ContentStore) -> None:
    fake.route = lambda req: (
        (307, {"Location": "http://cdn.example.com/blob"}, b"") if "/blobs/" in req.path else None
    )
    with store.writer("layer") as w, pytest.raises(FailedPrecondition, match="cdn.example.com"):
        RegistrySource().fetch_blob(_layer(fake), w)


def test_redirect_to_another_host_drops_the_authorization_header(fake: Fake, store: ContentStore) -> None:
    def route(req: Request) -> Reply | None:
        if req.path.startswith("/storage/"):
            return 200, {}, LAYER
        if "/blobs/" in req.path:
            return 307, {"Location": f"http://localhost:{fake.port}/storage/layer"}, b""
        return None

    fake.route = route
    config = RegistryConfig(credentials={fake.host: Credentials(registry_token="tok-123")})
    source = RegistrySource(config)
    client = source.client(fake.host)
    client._tokens["repository:team/app:pull"] = ("tok-123", float("inf"))
    with store.writer("layer", expected=LAYER_DIGEST) as w:
        source.fetch_blob(_layer(fake), w)
        w.commit(len(LAYER))
    blob_req = next(r for r in fake.requests if "/blobs/" in r.path)
    storage_req = next(r for r in fake.requests if r.path.startswith("/storage/"))
    assert blob_req.headers.get("Authorization") == "Bearer tok-123"
    assert "Authorization" not in storage_req.headers


def test_manifest_digest_mismatch_is_detected(fake: Fake) -> None:
    fake.manifest_digest_header = sha256_digest(b"a different manifest")
    with pytest.raises(ChecksumMismatch, match="manifest digest mismatch"):
        RegistrySource().resolve(parse_reference(f"{fake.host}/team/app:1.0"))
    wanted = sha256_digest(b"what we asked for")
    fake.route = lambda req: (
        (200, {"Content-Type": OCI_MANIFEST}, MANIFEST) if "/manifests/" in req.path else None
    )
    with pytest.raises(ChecksumMismatch, match=f"expected {wanted}"):
        RegistrySource().resolve(parse_reference(f"{fake.host}/team/app@{wanted}"))
    assert not is_retryable(ChecksumMismatch("x"))


def test_corrupt_config_blob_is_detected(fake: Fake) -> None:
    fake.route = lambda req: (
        (200, {}, CONFIG.replace(b"amd64", b"arm64")) if CONFIG_DIGEST in req.path else None
    )
    with pytest.raises(ChecksumMismatch, match=CONFIG_DIGEST):
        RegistrySource().resolve(parse_reference(f"{fake.host}/team/app:1.0"))


def test_oversized_manifest_is_refused(fake: Fake) -> None:
    huge = b" " * (MAX_MANIFEST_BYTES + 10)
    fake.route = lambda req: (
        (200, {"Content-Type": OCI_MANIFEST}, huge) if "/manifests/" in req.path else None
    )
    with pytest.raises(LimitExceeded):
        RegistrySource().resolve(parse_reference(f"{fake.host}/team/app:1.0"))


def test_fetch_resumes_with_a_range_request(fake: Fake, store: ContentStore) -> None:
    with store.writer("layer", expected=LAYER_DIGEST, expected_size=len(LAYER)) as w:
        w.write(LAYER[:300_000])
    with store.writer("layer", expected=LAYER_DIGEST, expected_size=len(LAYER)) as w:
        RegistrySource().fetch_blob(_layer(fake), w)
        assert w.commit().digest == LAYER_DIGEST
    blob_req = next(r for r in fake.requests if "/blobs/" in r.path)
    assert blob_req.headers["Range"] == "bytes=300000-"


def test_fetch_resumes_correctly_when_the_server_ignores_range(fake: Fake, store: ContentStore) -> None:
    fake.honour_range = False
    with store.writer("layer", expected=LAYER_DIGEST, expected_size=len(LAYER)) as w:
        w.write(LAYER[:300_000])
    with store.writer("layer", expected=LAYER_DIGEST, expected_size=len(LAYER)) as w:
        RegistrySource().fetch_blob(_layer(fake), w)
        assert w.commit().digest == LAYER_DIGEST


def test_short_body_leaves_a_resumable_ingest_and_is_retryable(fake: Fake, store: ContentStore) -> None:
    def route(req: Request) -> Reply | None:
        if "/blobs/" in req.path and "Range" not in req.headers:
            # declare the full length but close after part of it
            return 200, {"Content-Length": str(len(LAYER)), "Connection": "close"}, LAYER[:200_000]
        return None

    fake.route = route
    source = RegistrySource()
    with (
        store.writer("layer", expected=LAYER_DIGEST, expected_size=len(LAYER)) as w,
        pytest.raises(Unavailable) as err,
    ):
        source.fetch_blob(_layer(fake), w)
    assert is_retryable(err.value)
    with store.writer("layer", expected=LAYER_DIGEST, expected_size=len(LAYER)) as w:
        assert w.offset == 200_000
        source.fetch_blob(_layer(fake), w)
        assert w.commit().digest == LAYER_DIGEST


def test_server_sending_more_than_the_blob_size_is_stopped(fake: Fake, store: ContentStore) -> None:
    fake.route = lambda req: (200, {}, LAYER + b"extra") if "/blobs/" in req.path else None
    with store.writer("layer") as w, pytest.raises(ChecksumMismatch, match="more than the expected"):
        RegistrySource().fetch_blob(_layer(fake), w)
        assert w.offset <= len(LAYER)


def test_push_sends_monolithic_put_with_digest(fake: Fake) -> None:
    def route(req: Request) -> Reply | None:
        if req.method == "HEAD":
            return 404, {}, b""
        if req.method == "POST":
            return 202, {"Location": "/v2/team/app/blobs/uploads/u1?_state=abc"}, b""
        if req.method == "PUT":
            return 201, {"Docker-Content-Digest": LAYER_DIGEST}, b""
        return None

    fake.route = route
    assert RegistryClient(fake.host).push_blob("team/app", LAYER, LAYER_DIGEST, len(LAYER)) is True
    put = next(r for r in fake.requests if r.method == "PUT")
    assert put.path == f"/v2/team/app/blobs/uploads/u1?_state=abc&digest={LAYER_DIGEST.replace(':', '%3A')}"
    assert put.body == LAYER

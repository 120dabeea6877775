"""A Registry HTTP API v2 client (OCI distribution spec): reads, pushes, auth.

* HTTPS with certificate verification by default; plain HTTP only where
  :meth:`RegistryConfig.allows_http` says so. Every URL the client is sent to
  (redirect, token realm, upload location) is held to the same rule, so an HTTPS
  registry cannot downgrade it to ``http://``.
* On ``401`` with ``WWW-Authenticate: Bearer realm=..,service=..,scope=..`` a
  token is fetched from the realm (anonymously, with Basic credentials, or by an
  OAuth2 refresh grant), cached per scope until it expires, and the request
  retried once; ``Basic`` challenges are answered with the configured password.
* Status mapping: 401/403 → Unauthorized, 404 → NotFound, 408/429/5xx and
  connection failures → Unavailable (retryable), 400 → InvalidArgument,
  405 → Unsupported, other → FailedPrecondition, each with the registry's own
  error codes and messages.
* Redirects are followed by hand, dropping ``Authorization`` when the host
  changes (blob stores behind a CDN). Manifest digests are verified against the
  requested digest or the registry's ``Docker-Content-Digest``.
* Pushes: HEAD first to skip present blobs, then a monolithic PUT or chunked
  PATCHes (``Content-Range: start-end``) closed by a PUT with ``?digest=``.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import urllib3
from urllib3.exceptions import HTTPError as _Urllib3Error
from urllib3.exceptions import MaxRetryError, SSLError

from capsa.errors import (
    CapsaError,
    ChecksumMismatch,
    FailedPrecondition,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    Unauthorized,
    Unavailable,
    Unsupported,
)
from capsa.images.oci import MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, Digest, sha256_digest
from capsa.images.sources.registry_auth import RegistryConfig, parse_challenges

__all__ = ["RegistryClient", "discard_response", "make_pool"]

_ERROR_BODY_LIMIT = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class RegistryClient:
    """Registry API v2 calls against one registry host; safe to share between threads."""

    def __init__(self, host: str, config: RegistryConfig | None = None, *, pool: urllib3.PoolManager | None = None) -> None:
        self.host = host
        self.config = config or RegistryConfig()
        scheme = "http" if self.config.allows_http(host) else "https"
        self.base_url = f"{scheme}://{host}"
        self._pool = pool or make_pool(self.config)
        self._creds = self.config.credentials_for(host)
        self._tokens: dict[str, tuple[str, float]] = {}
        self._basic = False
        self._lock = threading.Lock()

    # -- reads -----------------------------------------------------------------------------
    def ping(self) -> None:
        """``GET /v2/``: is this a registry, and can we authenticate to it?"""
        _finish(self._request("GET", "/v2/", scope=None, what=f"registry {self.host}"))

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str | None, Digest]:
        """(body, content type, verified digest) of a manifest or index."""
        sep = "@" if reference.startswith("sha256:") else ":"
        what = f"manifest {self.host}/{repo}{sep}{reference}"
        resp = self._request(
            "GET", f"/v2/{repo}/manifests/{reference}", scope=_pull(repo), what=what,
            headers={"Accept": MANIFEST_ACCEPT},
        )
        body = _read_limited(resp, MAX_MANIFEST_BYTES, what)
        actual = sha256_digest(body)
        if reference.startswith("sha256:"):
            if actual != reference:
                raise ChecksumMismatch(f"{what}: registry served content with digest {actual}, expected {reference}")
        else:
            header = resp.headers.get("Docker-Content-Digest")
            if header and header.startswith("sha256:") and header != actual:
                raise ChecksumMismatch(
                    f"{what}: manifest digest mismatch, registry says {header}, content hashes to {actual}"
                )
        return body, resp.headers.get("Content-Type"), actual

    def get_blob_bytes(self, repo: str, digest: Digest, *, size: int, limit: int) -> bytes:
        what = f"blob {self.host}/{repo}@{digest}"
        if size > limit:
            raise LimitExceeded(f"{what} is {size} bytes, over the {limit}-byte limit for this kind of blob")
        body = _read_limited(self._request("GET", f"/v2/{repo}/blobs/{digest}", scope=_pull(repo), what=what), limit, what)
        actual = sha256_digest(body)
        if actual != digest or len(body) != size:
            raise ChecksumMismatch(f"{what}: expected {digest} ({size} bytes), got {actual} ({len(body)} bytes)")
        return body

    def open_blob(self, repo: str, digest: Digest, offset: int = 0) -> tuple[urllib3.BaseHTTPResponse, int]:
        """A streaming response for the blob and the offset its body starts at (0 if Range was ignored)."""
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        what = f"blob {self.host}/{repo}@{digest}"
        resp = self._request("GET", f"/v2/{repo}/blobs/{digest}", scope=_pull(repo), what=what, headers=headers, ok=(200, 206, 416))
        if resp.status == 416:
            _finish(resp)
            if not offset:
                raise FailedPrecondition(f"{what}: registry refused to serve the blob from byte 0 (HTTP 416)")
            return self.open_blob(repo, digest, 0)  # the partial ingest is longer than the blob: restart
        if resp.status == 206:
            match = re.match(r"bytes (\d+)-\d+/(?:\d+|\*)", resp.headers.get("Content-Range", ""))
            return resp, int(match.group(1)) if match else 0
        return resp, 0

    def blob_exists(self, repo: str, digest: Digest) -> bool:
        resp = self._request(
            "HEAD", f"/v2/{repo}/blobs/{digest}", scope=_pull(repo), what=f"blob {self.host}/{repo}@{digest}", ok=(200, 404)
        )
        _finish(resp)
        return resp.status == 200

    # -- writes ------------------------------------------------------------------------------
    def push_blob(
        self, repo: str, data: bytes | Path | IO[bytes], digest: Digest | str, size: int, *, chunk_size: int | None = None
    ) -> bool:
        """Upload a blob unless the registry has it (HEAD first); True if bytes were sent.

        Monolithic (one PUT) by default; with ``chunk_size`` the blob goes in PATCH
        requests of that many bytes, then a closing PUT.
        """
        digest = Digest(digest)
        if self.blob_exists(repo, digest):
            return False
        what = f"upload of {digest} to {self.host}/{repo}"
        with _open_data(data) as stream:
            resp = self._request("POST", f"/v2/{repo}/blobs/uploads/", scope=_push(repo), what=what, ok=(202,),
                                 headers={"Content-Length": "0"})
            location = self._location(resp, what)
            _finish(resp)
            try:
                if chunk_size is None or size <= chunk_size:
                    resp = self._request(
                        "PUT", _with_query(location, digest=digest), scope=_push(repo), what=what, ok=(201,),
                        headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)}, body=stream,
                    )
                else:
                    sent = 0
                    while sent < size:
                        chunk = stream.read(min(chunk_size, size - sent))
                        if not chunk:
                            raise InvalidArgument(f"{what}: source ended after {sent} of {size} bytes")
                        resp = self._request(
                            "PATCH", location, scope=_push(repo), what=what, ok=(202,), body=chunk, headers={
                                "Content-Type": "application/octet-stream", "Content-Length": str(len(chunk)),
                                "Content-Range": f"{sent}-{sent + len(chunk) - 1}",
                            },
                        )
                        location = self._location(resp, what)
                        _finish(resp)
                        sent += len(chunk)
                    resp = self._request("PUT", _with_query(location, digest=digest), scope=_push(repo), what=what,
                                         ok=(201,), headers={"Content-Length": "0"})
            except BaseException:
                with contextlib.suppress(CapsaError):
                    _finish(self._request("DELETE", location, scope=_push(repo), what=what, ok=(204, 404)))
                raise
        _finish(resp)
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise ChecksumMismatch(f"{what}: registry stored {got}, expected {digest}")
        return True

    def mount_blob(self, repo: str, digest: Digest | str, from_repo: str) -> bool:
        """Ask the registry to link ``digest`` from ``from_repo`` into ``repo`` (cross-repository mount);
        False when it will not (it then opens an upload session, which is cancelled here)."""
        what = f"mount of {digest} from {self.host}/{from_repo} into {repo}"
        url = _with_query(f"/v2/{repo}/blobs/uploads/", **{"mount": str(digest), "from": from_repo})
        resp = self._request("POST", url, scope=_push(repo), what=what, ok=(201, 202), headers={"Content-Length": "0"})
        if resp.status == 201:
            _finish(resp)
            return True
        location = self._location(resp, what)
        _finish(resp)
        with contextlib.suppress(CapsaError):
            _finish(self._request("DELETE", location, scope=_push(repo), what=what, ok=(204, 404)))
        return False

    def push_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> Digest:
        """PUT a manifest or index under a tag or its digest; returns its digest."""
        digest = sha256_digest(data)
        what = f"push of manifest {self.host}/{repo}:{reference}"
        resp = self._request("PUT", f"/v2/{repo}/manifests/{reference}", scope=_push(repo), what=what, ok=(201,),
                             headers={"Content-Type": media_type, "Content-Length": str(len(data))}, body=data)
        _finish(resp)
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise ChecksumMismatch(f"{what}: registry computed {got}, we sent {digest}")
        return digest

    # -- plumbing ------------------------------------------------------------------------------
    def _request(
        self, method: str, path_or_url: str, *, scope: str | None, what: str,
        headers: Mapping[str, str] | None = None, body: bytes | IO[bytes] | None = None, ok: tuple[int, ...] = (200,),
    ) -> urllib3.BaseHTTPResponse:
        url = path_or_url if "://" in path_or_url else self.base_url + path_or_url
        body_start = body.tell() if body is not None and not isinstance(body, bytes) else 0
        for attempt in (1, 2):
            hdrs = {"User-Agent": self.config.user_agent, **(headers or {})}
            hdrs.update(self._auth_header(scope))
            resp = self._send(method, url, hdrs, body, what)
            if resp.status == 401 and attempt == 1:
                challenges = parse_challenges(resp.headers.getlist("WWW-Authenticate"))
                resp.drain_conn()
                resp.release_conn()
                if self._answer(challenges, scope, what):
                    if body is not None and not isinstance(body, bytes):
                        body.seek(body_start)
                    continue
                raise Unauthorized(f"{what}: registry {self.host} requires authentication and no usable credentials are configured")
            break
        if resp.status in ok:
            return resp
        raise _status_error(resp, what, self.host)

    def _send(self, method: str, url: str, headers: dict[str, str], body: bytes | IO[bytes] | None, what: str) -> urllib3.BaseHTTPResponse:
        origin = urllib.parse.urlsplit(url).netloc
        for _ in range(self.config.max_redirects + 1):
            self._check_transport(url, what)
            try:
                resp = self._pool.request(
                    method, url, headers=headers, body=body, preload_content=False, redirect=False, retries=False,
                    timeout=urllib3.Timeout(connect=self.config.connect_timeout, read=self.config.read_timeout),
                )
            except (SSLError, MaxRetryError, _Urllib3Error, OSError) as exc:
                raise _transport_error(exc, url, what, self.host) from None
            if resp.status not in _REDIRECTS or "Location" not in resp.headers:
                return resp
            location = urllib.parse.urljoin(url, resp.headers["Location"])
            resp.drain_conn()
            resp.release_conn()
            if urllib.parse.urlsplit(location).netloc != origin:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            if resp.status == 303:
                method, body = "GET", None
            url = location
        raise Unavailable(f"{what}: more than {self.config.max_redirects} redirects")

    def _check_transport(self, url: str, what: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "https":
            return
        if parts.scheme == "http" and self.config.allows_http(parts.netloc):
            return
        raise FailedPrecondition(
            f"{what}: refusing {parts.scheme}://{parts.netloc}: plain HTTP is allowed only for loopback hosts "
            f"or registries marked insecure (add {parts.netloc!r} to the insecure registries to allow it)"
        )

    def _location(self, resp: urllib3.BaseHTTPResponse, what: str) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise FailedPrecondition(f"{what}: registry gave no upload Location")
        return urllib.parse.urljoin(self.base_url + "/", location)

    # -- auth ------------------------------------------------------------------------------------
    def _auth_header(self, scope: str | None) -> dict[str, str]:
        with self._lock:
            token = self._tokens.get(scope or "")
            if token and token[1] > time.monotonic():
                return {"Authorization": f"Bearer {token[0]}"}
        if self._basic and self._creds and self._creds.username is not None:
            raw = f"{self._creds.username}:{self._creds.password or ''}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        return {}

    def _answer(self, challenges: list[tuple[str, dict[str, str]]], scope: str | None, what: str) -> bool:
        """Prepare credentials for a retry; False if there is nothing new to try."""
        for scheme, params in challenges:
            if scheme == "bearer" and params.get("realm"):
                token, expires_in = self._fetch_token(params, scope, what)
                with self._lock:
                    self._tokens[scope or ""] = (token, time.monotonic() + max(expires_in - 10, 1))
                return True
        for scheme, _ in challenges:
            if scheme == "basic" and self._creds and self._creds.username is not None and not self._basic:
                self._basic = True
                return True
        return False

    def _fetch_token(self, params: dict[str, str], scope: str | None, what: str) -> tuple[str, int]:
        creds = self._creds
        if creds and creds.registry_token:
            return creds.registry_token, 300
        realm = params["realm"]
        self._check_transport(realm, what)
        query: dict[str, str] = {}
        if params.get("service"):
            query["service"] = params["service"]
        wanted_scope = scope or params.get("scope")
        headers = {"User-Agent": self.config.user_agent}
        method, body = "GET", None
        if creds and creds.identity_token:
            method = "POST"
            form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token, "client_id": "capsa", **query}
            if wanted_scope:
                form["scope"] = wanted_scope
            body = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            url = realm
        else:
            if wanted_scope:
                query["scope"] = wanted_scope
            if creds and creds.username is not None:
                query["account"] = creds.username
                raw = f"{creds.username}:{creds.password or ''}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
            url = _with_query(realm, **query)
        resp = self._send(method, url, headers, body, f"{what} (token from {urllib.parse.urlsplit(realm).netloc})")
        if resp.status != 200:
            if resp.status >= 500 or resp.status == 429:
                raise _status_error(resp, f"{what}: token server", self.host)
            resp.drain_conn()
            resp.release_conn()
            who = f"as {creds.username!r}" if creds and creds.username else "anonymously"
            raise Unauthorized(
                f"{what}: token server {urllib.parse.urlsplit(realm).netloc} refused {who} "
                f"for scope {wanted_scope!r} (HTTP {resp.status})"
            )
        try:
            doc = json.loads(_read_limited(resp, 1024 * 1024, "token response"))
            token = doc.get("token") or doc.get("access_token")
            expires_in = int(doc.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            raise Unauthorized(f"{what}: token server answered with something that is not a token") from None
        if not isinstance(token, str) or not token:
            raise Unauthorized(f"{what}: token server answered without a token")
        return token, expires_in


def make_pool(config: RegistryConfig) -> urllib3.PoolManager:
    return urllib3.PoolManager(
        num_pools=16, maxsize=8, cert_reqs="CERT_REQUIRED", ca_certs=str(config.ca_file) if config.ca_file else None,
    )


def _pull(repo: str) -> str:
    return f"repository:{repo}:pull"


def _push(repo: str) -> str:
    return f"repository:{repo}:pull,push"


def _with_query(url: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = parts.query + ("&" if parts.query else "") + urllib.parse.urlencode(params)
    return urllib.parse.urlunsplit(parts._replace(query=query))


@contextlib.contextmanager
def _open_data(data: bytes | Path | IO[bytes]) -> Iterator[IO[bytes]]:
    if isinstance(data, (bytes, bytearray)):
        yield io.BytesIO(data)
    elif isinstance(data, Path):
        with open(data, "rb") as f:
            yield f
    else:
        yield data


def _read_limited(resp: urllib3.BaseHTTPResponse, limit: int, what: str) -> bytes:
    declared = resp.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limit:
        discard_response(resp)
        raise LimitExceeded(f"{what} is {declared} bytes, over the {limit}-byte limit for such documents")
    try:
        data = resp.read(limit + 1, decode_content=True)
    except (_Urllib3Error, OSError) as exc:
        discard_response(resp)
        raise Unavailable(f"{what}: connection failed while reading: {exc}") from None
    if len(data) > limit:
        discard_response(resp)
        raise LimitExceeded(f"{what} is over the {limit}-byte limit for such documents")
    resp.release_conn()
    return data


def _finish(resp: urllib3.BaseHTTPResponse) -> None:
    """Done with a response whose body is empty or unwanted but small: keep the connection."""
    resp.drain_conn()
    resp.release_conn()


def discard_response(resp: urllib3.BaseHTTPResponse) -> None:
    """Give up on a response mid-body: its connection cannot be reused."""
    resp.close()
    resp.release_conn()


def _registry_message(resp: urllib3.BaseHTTPResponse) -> str:
    try:
        raw = resp.read(_ERROR_BODY_LIMIT, decode_content=True)
    except (_Urllib3Error, OSError):
        return ""
    finally:
        discard_response(resp)
    try:
        errors = json.loads(raw).get("errors") or []
        parts = [f"{e.get('code', '?')}: {e.get('message', '')}".strip() for e in errors if isinstance(e, dict)]
        return "; ".join(parts)
    except (ValueError, AttributeError):
        text = raw.decode("utf-8", "replace").strip()
        return text[:200]


def _status_error(resp: urllib3.BaseHTTPResponse, what: str, host: str) -> CapsaError:
    status = resp.status
    detail = _registry_message(resp)
    suffix = f" ({detail})" if detail else ""
    if status in (401, 403):
        return Unauthorized(f"{what}: registry {host} denied access (HTTP {status}){suffix}")
    if status == 404:
        return NotFound(f"{what}: not found on registry {host}{suffix}")
    if status in (408, 429) or status >= 500:
        return Unavailable(f"{what}: registry {host} answered HTTP {status}{suffix}")
    if status == 405:
        return Unsupported(f"{what}: registry {host} does not allow this operation (HTTP 405){suffix}")
    if status == 400:
        return InvalidArgument(f"{what}: registry {host} rejected the request (HTTP 400){suffix}")
    return FailedPrecondition(f"{what}: registry {host} answered HTTP {status}{suffix}")


def _transport_error(exc: BaseException, url: str, what: str, host: str) -> CapsaError:
    reason = exc.reason if isinstance(exc, MaxRetryError) and exc.reason is not None else exc
    netloc = urllib.parse.urlsplit(url).netloc
    if isinstance(reason, SSLError):
        return FailedPrecondition(
            f"{what}: TLS with {netloc} failed ({reason}); if it is a plain-HTTP registry, plain HTTP is "
            "allowed only for loopback hosts or registries marked insecure"
        )
    return Unavailable(f"{what}: cannot reach {netloc}: {reason}")

"""Sign-in with a one-time token (like Jupyter), cookie sessions, CSRF and security headers.

* ``capsa web`` prints ``/login?token=...``. The token works once: the first visit turns it into a
  session and burns it, so a URL that leaks later (shell history, a screenshot) opens nothing.
  ``kill -USR1 <pid>`` prints a fresh one.
* The session is an HttpOnly, SameSite=Strict cookie (Secure under TLS): scripts cannot read it and
  other sites cannot make the browser send it.
* Every state-changing request must carry the session's CSRF token in ``X-CSRF-Token`` (htmx adds
  it from the page) and, when the browser sends one, an ``Origin`` equal to ours.
* The ``Host`` header must name the address we serve, so a DNS-rebinding page cannot reach a
  dashboard on 127.0.0.1 under its own name.

This is a plain ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``, which would buffer
the server-sent event streams.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any

__all__ = ["COOKIE", "CSRF_HEADER", "AuthMiddleware", "Session", "Sessions", "cookie_name"]

COOKIE = "capsa_session"


def cookie_name(origin: str) -> str:
    """``capsa_session_<port>``: browsers do not separate cookies by port, so two dashboards on one host
    (say a reader's and a developer's) would otherwise sign each other out."""
    port = origin.rsplit(":", 1)[-1]
    return f"{COOKIE}_{port}" if port.isdigit() else COOKIE
CSRF_HEADER = "x-csrf-token"
SESSION_IDLE_S = 12 * 3600
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# Pages load scripts, styles and data only from this origin; nothing inline runs.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class Session:
    id: str
    csrf: str
    last_seen: float = field(default_factory=time.monotonic)


class Sessions:
    """Login tokens (one use each) and live sessions, in memory: restarting ``capsa web`` signs everyone out."""

    def __init__(self) -> None:
        self._tokens: set[str] = set()
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def new_token(self) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens.add(token)
        return token

    def redeem(self, token: str) -> Session | None:
        """A new session when ``token`` is valid and unused; the token is spent either way it matched."""
        with self._lock:
            match = next((t for t in self._tokens if hmac.compare_digest(t, token)), None)
            if match is None:
                return None
            self._tokens.discard(match)
            session = Session(id=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32))
            self._sessions[session.id] = session
            return session

    def end(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if now - session.last_seen > SESSION_IDLE_S:
                del self._sessions[session_id]
                return None
            session.last_seen = now
            return session


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _cookie(headers: dict[str, str], name: str) -> str | None:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except Exception:   # a malformed Cookie header is simply no session
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


class AuthMiddleware:
    """Refuses what is not signed in (401), forged (403) or addressed to another host (421)."""

    def __init__(self, app: ASGIApp, sessions: Sessions, *, allowed_hosts: set[str], origin: str,
                 public_prefixes: tuple[str, ...] = ("/login", "/static/")) -> None:
        self.app = app
        self.sessions = sessions
        self.allowed_hosts = allowed_hosts
        self.origin = origin
        self.public = public_prefixes
        self.cookie = cookie_name(origin)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        path: str = scope["path"]
        if headers.get("host", "") not in self.allowed_hosts:
            await _plain(send, 421, "unknown host: open the dashboard at the address capsa web printed")
            return
        send = _with_security_headers(send)
        if path.startswith(self.public):
            await self.app(scope, receive, send)
            return
        session = self.sessions.get(_cookie(headers, self.cookie))
        if session is None:
            await _plain(send, 401, "not signed in: open the one-time URL printed by `capsa web` "
                                    "(kill -USR1 its pid for a new one)")
            return
        if scope["method"] not in _SAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None and origin != self.origin:
                await _plain(send, 403, "cross-origin request refused")
                return
            if not hmac.compare_digest(headers.get(CSRF_HEADER, ""), session.csrf):
                await _plain(send, 403, "missing or wrong CSRF token: reload the page and try again")
                return
        scope.setdefault("state", {})["session"] = session
        await self.app(scope, receive, send)


def _with_security_headers(send: Send) -> Send:
    async def wrapped(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            extra = [
                (b"content-security-policy", CSP.encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"x-frame-options", b"DENY"),
                # The login URL carries the token: never let it travel in a Referer.
                (b"referrer-policy", b"no-referrer"),
            ]
            message["headers"] = [*message.get("headers", []), *extra]
        await send(message)
    return wrapped


async def _plain(send: Send, status: int, text: str) -> None:
    body = (text + "\n").encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})

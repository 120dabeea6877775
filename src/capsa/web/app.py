"""The Starlette application: sign-in, error pages, templates, and the routes of :mod:`.pages_jobs`
and :mod:`.pages_more` under ``/n/<node>/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from capsa.errors import CapsaError, FailedPrecondition, NotFound, PermissionDenied, Unauthorized, Unavailable
from capsa.pki import Role
from capsa.web import views
from capsa.web.auth import AuthMiddleware, Sessions, cookie_name
from capsa.web.hub import Hub, Node

__all__ = ["WebApp", "build_app"]

HERE = Path(__file__).parent


class WebApp:
    """What every route needs: the nodes, the sessions and the templates."""

    def __init__(self, hub: Hub, sessions: Sessions, *, secure: bool) -> None:
        self.hub = hub
        self.sessions = sessions
        self.secure = secure
        env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                          trim_blocks=True, lstrip_blocks=True)
        env.filters.update(bytes=views.fmt_bytes, time=views.fmt_time, duration=views.fmt_duration)
        self.templates = Jinja2Templates(env=env)

    def node(self, request: Request) -> Node:
        return self.hub.get(request.path_params["node"])

    def render(self, request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
        node = self.hub.get(request.path_params["node"]) if "node" in request.path_params else self.hub.default
        session = request.scope.get("state", {}).get("session")
        context.update(node=node, nodes=list(self.hub.nodes.values()), can_change=node.can_change,
                       csrf=session.csrf if session else "", role=node.role.value)
        response = self.templates.TemplateResponse(request, template, context, status_code=status_code)
        response.headers["cache-control"] = "no-store"
        return response

    @staticmethod
    def require_change(node: Node) -> None:
        """Refused here, before any RPC, for a config whose role cannot change anything."""
        if not node.role.allows(Role.DEVELOPER):
            raise PermissionDenied(f"the dashboard runs with a {node.role.value} certificate: "
                                   "it can only look, not change anything")


def _status(exc: CapsaError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, PermissionDenied | Unauthorized):
        return 403
    if isinstance(exc, Unavailable):
        return 503
    if isinstance(exc, FailedPrecondition):
        return 409
    return 400 if exc.exit_code in (2, 4, 5, 9) else 500


def build_app(hub: Hub, sessions: Sessions, *, allowed_hosts: set[str], origin: str,
              secure: bool = False) -> Any:
    from capsa.web import pages_jobs, pages_more

    web = WebApp(hub, sessions, secure=secure)

    async def login(request: Request) -> Response:
        if "signed_out" in request.query_params:
            return PlainTextResponse("signed out: open a new link from `capsa web` (kill -USR1 its pid) to sign in")
        session = sessions.redeem(request.query_params.get("token", ""))
        if session is None:
            return PlainTextResponse("this sign-in link is invalid or was already used: ask `capsa web` for a new "
                                     "one (kill -USR1 its pid)", status_code=403)
        # A same-origin refresh rather than a redirect: a SameSite=Strict cookie set while following a
        # link from another site would not be sent on the redirect, and the user would bounce to a 401.
        response = HTMLResponse('<!doctype html><meta http-equiv="refresh" content="0;url=/">'
                                '<title>capsa</title><a href="/">Signed in: continue</a>')
        response.set_cookie(cookie_name(origin), session.id, httponly=True, samesite="strict", secure=secure, path="/")
        response.headers["cache-control"] = "no-store"
        return response

    async def logout(request: Request) -> Response:
        """POST only, so the CSRF check applies: another site cannot sign the user out either."""
        sessions.end(request.scope["state"]["session"].id)
        response = PlainTextResponse("signed out: open a new link from `capsa web` (kill -USR1 its pid) to sign in")
        response.delete_cookie(cookie_name(origin), path="/", secure=secure, httponly=True, samesite="strict")
        response.headers["hx-redirect"] = "/login?signed_out=1"
        return response

    async def home(request: Request) -> Response:
        return RedirectResponse(f"/n/{hub.default.name}/", status_code=303)

    async def capsa_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CapsaError)
        return error_page(request, _status(exc), str(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_page(request, exc.status_code, exc.detail)

    def error_page(request: Request, status: int, message: str) -> Response:
        if request.headers.get("hx-request") or request.method != "GET":
            return PlainTextResponse(message, status_code=status)
        try:
            return web.render(request, "error.html", status_code=status, status=status, message=message)
        except CapsaError:   # an unknown node in the URL: no node to render the frame with
            return PlainTextResponse(message, status_code=status)

    routes = [
        Route("/login", login),
        Route("/logout", logout, methods=["POST"]),
        Route("/", home),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
        Mount("/n/{node}", routes=[*pages_jobs.routes(web), *pages_more.routes(web)]),
    ]
    app = Starlette(routes=routes, exception_handlers={CapsaError: capsa_error, HTTPException: http_error})
    return AuthMiddleware(app, sessions, allowed_hosts=allowed_hosts, origin=origin)

"""Running the dashboard: bind, print the one-time sign-in URL, serve with uvicorn until stopped."""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capsa.config import load_client_config
from capsa.config.client import find_client_config
from capsa.errors import InvalidArgument
from capsa.web.auth import Sessions
from capsa.web.hub import Hub
from capsa.web.tls import TlsFiles, ensure_web_cert, is_loopback

__all__ = ["WebOptions", "serve"]


@dataclass(frozen=True)
class WebOptions:
    host: str = "127.0.0.1"
    port: int = 8765
    allow_remote: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_dir: Path | None = None
    public_name: str | None = None   # the host name browsers use, for the URL and the Host check


def _tls(options: WebOptions) -> TlsFiles | None:
    if options.tls_cert or options.tls_key:
        if not (options.tls_cert and options.tls_key):
            raise InvalidArgument("--tls-cert and --tls-key go together")
        return TlsFiles(cert=options.tls_cert, key=options.tls_key)
    if options.tls_dir:
        hosts = [h for h in dict.fromkeys([options.public_name or "", options.host, socket.gethostname()]) if h
                 and h not in ("0.0.0.0", "::")]
        return ensure_web_cert(options.tls_dir, hosts)
    return None


def check_bind(options: WebOptions, tls: TlsFiles | None) -> None:
    """Loopback by default; anything else needs ``--allow-remote`` *and* TLS, so a session cookie never
    crosses a network in clear text."""
    if is_loopback(options.host):
        return
    if not options.allow_remote:
        raise InvalidArgument(f"--host {options.host} is not a loopback address: pass --allow-remote to serve the "
                              "dashboard to other machines (it then needs TLS: --tls-cert/--tls-key or --tls-dir)")
    if tls is None:
        raise InvalidArgument(f"serving on {options.host} needs TLS: give --tls-cert and --tls-key, or --tls-dir DIR "
                              "to have capsa make a web CA and certificate there")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(options: WebOptions, *, config_path: Path | None = None, node: str | None = None,
          echo: Callable[[str], Any] = print) -> None:
    import uvicorn

    from capsa.web.app import build_app

    tls = _tls(options)
    check_bind(options, tls)
    hub = Hub.from_config(load_client_config(find_client_config(config_path)), only=node)
    sock = _bind(options.host, options.port)
    port = sock.getsockname()[1]
    scheme = "https" if tls else "http"
    shown_host = options.public_name or ("127.0.0.1" if options.host in ("0.0.0.0", "::") else options.host)
    netloc = f"[{shown_host}]:{port}" if ":" in shown_host else f"{shown_host}:{port}"
    allowed = {netloc}
    if is_loopback(shown_host):
        allowed |= {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
    if not is_loopback(options.host):
        allowed |= {f"{socket.gethostname()}:{port}", f"{options.host}:{port}"}
    for each in hub.nodes.values():
        each.warm()
    sessions = Sessions()
    app = build_app(hub, sessions, allowed_hosts=allowed, origin=f"{scheme}://{netloc}", secure=tls is not None)

    def announce(*_: object) -> None:
        echo(f"capsa web: sign in at {scheme}://{netloc}/login?token={sessions.new_token()}  "
             f"(works once; `kill -USR1 {_pid()}` prints a new link)")
        sys.stdout.flush()

    nodes = ", ".join(f"{n.name} ({n.address}, {n.role.value})" for n in hub.nodes.values())
    echo(f"capsa web: serving {nodes} on {scheme}://{netloc}/")
    if tls is not None and tls.ca is not None:
        echo(f"capsa web: browsers must trust the web CA in {tls.ca}")
    signal.signal(signal.SIGUSR1, announce)   # before the first URL: a caller may ask for the next one at once
    announce()
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2,
                            ssl_certfile=str(tls.cert) if tls else None, ssl_keyfile=str(tls.key) if tls else None)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        hub.close()
        sock.close()


def _pid() -> int:
    import os

    return os.getpid()

"""``capsa web``: a browser dashboard that is an ordinary mTLS gRPC client of one or more daemons.

The web process holds no capsa state of its own: every page is rendered from
:class:`capsa.api.client.CapsaClient` calls made with the client config it was started with, so the
dashboard can do exactly what that config's role can do (the daemon enforces it; the web server
refuses early and hides buttons so a reader never sees a control that would fail).

Modules: :mod:`.auth` (one-time token sign-in, sessions, CSRF, security headers), :mod:`.hub`
(clients per node, short-lived caches), :mod:`.jobs_table` (filter/sort/page), :mod:`.streams`
(gRPC streams to server-sent events), :mod:`.app` and :mod:`.pages` (routes), :mod:`.server`
(uvicorn, TLS), :mod:`.tls` (certificates for non-loopback binds).
"""

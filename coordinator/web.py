"""The daemon's read-only HTTP endpoint: the status page, ``/status.json`` and Prometheus ``/metrics``.

A small threaded :mod:`http.server` in the coordinator process, bound by the ``[web]`` table
(default ``127.0.0.1:7790``). Only ``GET`` and ``HEAD`` are served; anything else is 405.
Clients on a loopback address need no token (the operator on the coordinator's machine, or an
SSH tunnel to it); every other client must send ``Authorization: Bearer <token>``, the token
read from a 0600 file written by ``medfl-coordinator web-token``, compared in constant time.
Without a token file, non-loopback clients are refused outright. The server speaks plain
HTTP: bind it to loopback and reach it over SSH, or put a TLS reverse proxy in front when it
must listen on the network (the README shows both); the token then travels inside TLS.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import pathlib
import secrets
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from medfl.errors import StateError

__all__ = ["StatusServer", "read_token", "write_token"]

log = logging.getLogger(__name__)


def write_token(path: pathlib.Path) -> str:
    """Create (or replace) the bearer token file with mode 0600; returns the token."""
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.replace(tmp, path)
    return token


def read_token(path: pathlib.Path | None) -> str | None:
    """The token in ``path``, or None when there is no file; refuses a file others can read."""
    if path is None or not path.exists():
        return None
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise StateError(f"web token file {path} has mode {mode:o}; others could read it: chmod 600 {path} or "
                         "run 'medfl-coordinator web-token' for a fresh one")
    token = path.read_text().strip()
    if len(token) < 16:
        raise StateError(f"web token file {path} holds no usable token; run 'medfl-coordinator web-token'")
    return token


def _is_loopback(host: str) -> bool:
    try:
        addr = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "medfl-coordinator"
    sys_version = ""
    timeout = 10.0  # a client that stalls mid-request loses its thread after this, not forever

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("web %s " + format, self.client_address[0], *args)

    def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'")
        self.send_header("X-Frame-Options", "DENY")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorised(self) -> bool:
        host = self.client_address[0]
        if _is_loopback(host):
            return True
        token = self.server.token
        given = self.headers.get("Authorization", "")
        ok = token is not None and given.startswith("Bearer ") and \
            hmac.compare_digest(given[7:].strip().encode(), token.encode())
        if not ok:
            self.server.refused += 1
            log.warning("web: refused %s %s from %s (%s)", self.command, self.path[:80], host,
                        "no token configured: only loopback clients are served" if token is None
                        else "missing or wrong bearer token")
            msg = ("401 unauthorised: send 'Authorization: Bearer <token>' (the token is in the coordinator's "
                   "web token file; 'medfl-coordinator web-token' makes one)\n")
            self._send(HTTPStatus.UNAUTHORIZED, msg.encode(), "text/plain; charset=utf-8",
                       {"WWW-Authenticate": 'Bearer realm="medfl-coordinator"'})
        return ok

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if not self._authorised():
            return
        path = self.path.split("?", 1)[0]
        route = self.server.routes.get(path)
        if route is None:
            self._send(HTTPStatus.NOT_FOUND, b"404 not found: try / , /status.json or /metrics\n",
                       "text/plain; charset=utf-8")
            return
        try:
            body, ctype = route()
        except Exception as exc:  # noqa: BLE001 - a page bug must not take the daemon down
            log.error("web: %s failed: %s: %s", path, type(exc).__name__, exc)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"500: see the coordinator's log\n", "text/plain")
            return
        self._send(HTTPStatus.OK, body, ctype)

    do_HEAD = do_GET

    def _refuse_method(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"405: this endpoint is read-only (GET)\n", "text/plain",
                   {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    token: str | None
    routes: dict[str, Callable[[], tuple[bytes, str]]]
    refused: int = 0


class StatusServer:
    """The HTTP server thread of the daemon.

    Parameters
    ----------
    host, port : str, int
        Where to listen (port 0: any free port, see :attr:`port`).
    token : str or None
        The bearer token non-loopback clients must send; None serves loopback only.
    page : callable
        Returns the status page's HTML.
    status_json : callable
        Returns the ``status --json`` document.
    metrics : callable
        Returns the Prometheus exposition.
    """

    def __init__(self, *, host: str, port: int, token: str | None, page: Callable[[], str],
                 status_json: Callable[[], dict], metrics: Callable[[], bytes]):
        self.httpd = _Server((host, port), _Handler)
        self.httpd.token = token
        self.httpd.routes = {
            "/": lambda: (page().encode(), "text/html; charset=utf-8"),
            "/status.json": lambda: (json.dumps(status_json(), default=str).encode(), "application/json"),
            "/metrics": lambda: (metrics(), "text/plain; version=0.0.4; charset=utf-8"),
        }
        self.host = host
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="status-web", daemon=True)

    @property
    def url(self) -> str:
        """``http://host:port/``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()

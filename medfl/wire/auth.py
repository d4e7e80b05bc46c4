"""ZAP handler for CurveZMQ: an allow-list consulted on every handshake, enforced on the server socket.

The handler runs pyzmq's ZAP thread for one context. Every CURVE handshake asks
``is_allowed(z85_public_key)``; a denial (or an exception inside it) refuses the connection
before any message is delivered. Accepted connections get the key's fingerprint as their
ZAP User-Id, which the server reads from each received frame (``frame.get("User-Id")``), so
the identity of a sender comes from the transport, never from what it claims.

pyzmq's ZAP handler (:class:`zmq.auth.thread.ThreadAuthenticator`) passes the callback the
client's Z85 key and sets the reply's User-Id from :meth:`curve_user_id`, which receives the
raw 32-byte key; this class overrides it to return the fingerprint. One authenticator per
context (it binds ``inproc://zeromq.zap.01``). ``is_allowed`` runs in the ZAP thread: a
SQLite-backed check must open its own connection there (or use ``check_same_thread=False``).

The server fails closed: :func:`enforce` sets ZMQ_ZAP_ENFORCE_DOMAIN on its socket, so if the
allow-list thread is gone no client is admitted.

References
----------
.. [1] ZeroMQ RFC 27/ZAP (ZeroMQ Authentication Protocol).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from medfl.wire.keys import KeyPair, fingerprint

__all__ = ["ZAP_DOMAIN", "AllowListAuthenticator", "current_address", "enforce"]

#: ZAP domain of medfl's server sockets (set with ZMQ_ZAP_DOMAIN so ZAP can be enforced)
ZAP_DOMAIN = "medfl"

log = logging.getLogger(__name__)

#: denials are logged in one line per this many seconds, with their count
DENIALS_REPORT_S = 60.0

_request = threading.local()


def current_address() -> str:
    """The source IP address of the handshake being decided ("" outside an allow-list callback).

    Valid only inside ``is_allowed`` (it runs in the ZAP thread, one request at a time).
    """
    return str(getattr(_request, "address", ""))


class _Provider:
    def __init__(self, is_allowed: Callable[[bytes], bool]):
        self.is_allowed = is_allowed
        self._denied = 0
        self._since = -DENIALS_REPORT_S  # the first denial is logged at once

    def callback(self, domain: str, key: bytes) -> bool:
        try:
            ok = bool(self.is_allowed(key))
        except Exception:  # a broken allow-list denies, it never crashes the auth thread
            log.exception("allow-list check failed for %s; denying", fingerprint(key))
            return False
        if not ok:
            self._denied += 1
            now = time.monotonic()
            if now - self._since >= DENIALS_REPORT_S:
                first = self._since < 0
                log.warning("CURVE handshake denied for %s: key not on the allow-list (%s)", fingerprint(key),
                            "further denials are counted and logged once a minute" if first else
                            f"{self._denied} denial(s) in the last {now - self._since:.0f} s")
                self._denied, self._since = 0, now
        return ok


class AllowListAuthenticator(ThreadAuthenticator):
    """ZAP authenticator whose CURVE decisions come from a callable.

    Parameters
    ----------
    context : zmq.Context
        The context whose sockets it guards.
    is_allowed : callable(bytes) -> bool
        Called with the client's Z85 public key on every handshake (in the auth thread), so
        approvals and revocations take effect on the next handshake. An exception denies.

    References
    ----------
    .. [1] ZeroMQ RFC 27/ZAP; RFC 26/CURVEZMQ.
    """

    def __init__(self, context: zmq.Context, *, is_allowed: Callable[[bytes], bool]):
        super().__init__(context=context, log=logging.getLogger(__name__ + ".zap"))
        self._provider = _Provider(is_allowed)

    def start(self) -> None:
        """Install the allow-list, then bind ``inproc://zeromq.zap.01`` and start the ZAP thread."""
        for domain in ("*", ZAP_DOMAIN):
            self.configure_curve_callback(domain=domain, credentials_provider=self._provider)
        super().start()

    def stop(self) -> None:
        """Stop the ZAP thread; sockets that enforce ZAP then refuse every new handshake."""
        super().stop()

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        """Note the request's source address (for :func:`current_address`), then decide as pyzmq does."""
        _request.address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        try:
            await super().handle_zap_message(msg)
        finally:
            _request.address = ""

    def curve_user_id(self, client_public_key: bytes) -> str:
        """User-Id of an accepted connection: the key's fingerprint (pyzmq passes the raw 32 bytes)."""
        return fingerprint(z85.encode(client_public_key))


def enforce(sock: zmq.Socket, *, auth: AllowListAuthenticator, keys: KeyPair) -> None:
    """Start ``auth`` and make ``sock`` a CURVE server that admits only what it allows (fail closed).

    Parameters
    ----------
    sock : zmq.Socket
        The server's socket, before it binds.
    auth : AllowListAuthenticator
        The allow-list of the socket's context (started here).
    keys : KeyPair
        The server's key pair (with its secret key).

    References
    ----------
    .. [1] ZeroMQ RFC 27/ZAP; zmq_setsockopt(3) (ZMQ_ZAP_DOMAIN, ZMQ_ZAP_ENFORCE_DOMAIN).
    """
    auth.start()
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no ZAP handler -> nobody gets in
    sock.curve_server = True
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public

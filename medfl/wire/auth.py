"""ZAP handler for CurveZMQ: an allow-list consulted on every handshake.

The handler runs pyzmq's ZAP thread for one context. Every CURVE handshake asks
``is_allowed(z85_public_key)``; a denial (or an exception inside it) refuses the connection
before any message is delivered. Accepted connections get the key's fingerprint as their
ZAP User-Id, which the server reads from each received frame (``frame.get("User-Id")``), so
the identity of a sender comes from the transport, never from what it claims.

References
----------
.. [1] ZeroMQ RFC 27/ZAP (ZeroMQ Authentication Protocol).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from medfl.wire.keys import fingerprint

__all__ = ["AllowListAuthenticator"]

log = logging.getLogger(__name__)


class _Provider:
    def __init__(self, is_allowed: Callable[[bytes], bool]):
        self.is_allowed = is_allowed

    def callback(self, domain: str, key: bytes) -> bool:
        try:
            ok = bool(self.is_allowed(key))
        except Exception:  # a broken allow-list denies, it never crashes the auth thread
            log.exception("allow-list check failed for %s; denying", fingerprint(key))
            return False
        if not ok:
            log.info("CURVE handshake denied for %s", fingerprint(key))
        return ok


class AllowListAuthenticator(ThreadAuthenticator):
    """ZAP authenticator whose CURVE decisions come from a callable.

    Parameters
    ----------
    context : zmq.Context
        The context whose sockets it guards.
    is_allowed : callable(bytes) -> bool
        Called with the client's Z85 public key on every handshake (in the auth thread).
    """

    def __init__(self, context: zmq.Context, *, is_allowed: Callable[[bytes], bool]):
        super().__init__(context=context, log=logging.getLogger(__name__ + ".zap"))
        self._provider = _Provider(is_allowed)

    def start(self) -> None:
        """Start the ZAP thread and install the allow-list."""
        super().start()
        self.configure_curve_callback(domain="*", credentials_provider=self._provider)

    def curve_user_id(self, client_public_key: bytes) -> str:
        """User-Id of an accepted connection: the key's fingerprint (pyzmq passes the raw 32 bytes)."""
        return fingerprint(z85.encode(client_public_key))

"""Admission of CURVE handshakes: approved keys in, unknown keys bounded, every refusal counted once a minute.

The coordinator's public key is handed to every hospital, so anyone can complete a CURVE
handshake with a fresh key of their own. Each such handshake used to insert a "pending" row
(synchronous SQLite) and two WARNING lines, without limit. :class:`Admission` is the ZAP
decision with bounds, modelled on OpenSSH's treatment of unauthenticated connections
(``MaxStartups``, ``PerSourcePenalties``): an approved key is admitted, and so is an invitation
key (:mod:`coordinator.invitations`: it can only say ENROLL); a key already on record
(pending or revoked) only bumps its counters; a new key is recorded as pending only while the
global and per-source-address token buckets have room and fewer than ``max_pending`` keys are
pending, and never in ``invite-only`` mode. Everything refused is counted and reported in one
WARNING line per :data:`REPORT_EVERY_S`, with counts, so a flood costs at most
``max_pending`` rows and one log line a minute. Pending keys not seen for
``pending_expiry_h`` are forgotten.

References
----------
.. [1] OpenSSH sshd_config(5): MaxStartups, PerSourcePenalties, PerSourceMaxStartups.
.. [2] ZeroMQ RFC 27/ZAP (the handshake decision runs in the ZAP handler thread).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from coordinator.config import EnrollmentSection
from coordinator.store import Store
from medfl.wire.auth import current_address

__all__ = ["REPORT_EVERY_S", "Admission", "TokenBucket"]

#: refused handshakes are reported in one log line per this many seconds
REPORT_EVERY_S = 60.0
#: per-address buckets kept at most (the oldest are dropped first)
MAX_ADDRESSES = 4096

log = logging.getLogger(__name__)


@dataclass
class TokenBucket:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` saved up.

    References
    ----------
    .. [1] J. Turner, "New directions in communications", IEEE Commun. Mag. 24(10), 1986 (leaky bucket).
    """

    rate: float
    burst: float
    tokens: float = -1.0
    t: float = field(default_factory=time.monotonic)

    def take(self, now: float) -> bool:
        """Take one token if there is one."""
        if self.tokens < 0:  # first use: full
            self.tokens, self.t = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class _Tally:
    refused: int = 0
    keys: set[str] = field(default_factory=set)
    recorded: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    since: float = field(default_factory=time.monotonic)


class Admission:
    """The ZAP decision of the coordinator's socket (thread-safe; runs in the ZAP thread).

    Parameters
    ----------
    store : Store
        The node table (a connection usable from the ZAP thread).
    policy : EnrollmentSection
        The ``[enrollment]`` table.
    fingerprint : callable(bytes) -> str
        Fingerprint of a Z85 public key.
    clock : callable() -> float
        Monotonic seconds (injectable for tests of the buckets).
    """

    def __init__(self, store: Store, policy: EnrollmentSection, *, fingerprint: Callable[[bytes], str],
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.policy = policy
        self._fp = fingerprint
        self._clock = clock
        self._lock = threading.Lock()
        self._global = TokenBucket(rate=policy.new_keys_per_minute / 60.0, burst=max(1.0, policy.new_keys_per_minute))
        self._per_address: dict[str, TokenBucket] = {}
        self._tally = _Tally(since=clock())
        self._last_expiry = 0.0

    def __call__(self, public_key: bytes, address: str | None = None) -> bool:
        """Admit or refuse one handshake from ``public_key`` at ``address`` (default: the ZAP request's)."""
        address = current_address() if address is None else address
        key = public_key.decode("ascii") if isinstance(public_key, bytes) else str(public_key)
        fp = self._fp(public_key)
        with self._lock:
            now = self._clock()
            self._expire(now)
            status = self.store.node_status(key)
            if status is None and self.store.is_invitation_key(key):
                return True  # it may only say ENROLL (coordinator.invitations decides, and says why not)
            if status == "approved":
                self.store.see_node(fp, key)
                return True
            if status is not None:  # pending or revoked: one row already, bump its counters
                self.store.see_node(fp, key)
                self._refused(fp, now)
                return False
            why = self._why_not_record(address, now)
            if why is None:
                self.store.see_node(fp, key)
                self._tally.recorded += 1
                log.warning("refused handshake from unapproved key %s%s; recorded as pending: approve it with "
                            "'medfl-coordinator nodes approve %s' once its hospital confirms the fingerprint",
                            fp, f" at {address}" if address else "", fp)
            else:
                self._tally.dropped[why] = self._tally.dropped.get(why, 0) + 1
            self._refused(fp, now)
            return False

    def _why_not_record(self, address: str, now: float) -> str | None:
        p = self.policy
        if p.mode == "invite-only":
            return "invite-only"
        if self.store.count_nodes("pending") >= p.max_pending:
            return f"{p.max_pending} pending already"
        bucket = self._per_address.get(address)
        if bucket is None:
            if len(self._per_address) >= MAX_ADDRESSES:
                self._per_address.pop(next(iter(self._per_address)))
            rate = p.new_keys_per_minute_per_address
            bucket = self._per_address[address] = TokenBucket(rate=rate / 60.0, burst=max(1.0, rate))
        if not bucket.take(now):
            return "rate limit for the address"
        if not self._global.take(now):
            return "global rate limit"
        return None

    def _refused(self, fp: str, now: float) -> None:
        t = self._tally
        t.refused += 1
        if len(t.keys) < 100_000:
            t.keys.add(fp)
        if now - t.since >= REPORT_EVERY_S:
            self.report(now)

    def tick(self) -> None:
        """Report the refusals if the last report is :data:`REPORT_EVERY_S` old (the daemon calls this each second)."""
        with self._lock:
            now = self._clock()
            if now - self._tally.since >= REPORT_EVERY_S:
                self.report(now)

    def report(self, now: float | None = None) -> None:
        """Log the refusals since the last report in one line (nothing when there were none)."""
        now = self._clock() if now is None else now
        t = self._tally
        if t.refused:
            dropped = ", ".join(f"{n} not recorded ({why})" for why, n in sorted(t.dropped.items()))
            log.warning("refused %d handshake(s) from %d unapproved key(s) in the last %.0f s: %d new key(s) "
                        "recorded as pending%s; 'medfl-coordinator nodes list' shows them", t.refused, len(t.keys),
                        now - t.since, t.recorded, f", {dropped}" if dropped else "")
        self._tally = _Tally(since=now)

    def _expire(self, now: float) -> None:
        if now - self._last_expiry < 60.0:
            return
        self._last_expiry = now
        gone = self.store.prune_nodes(status="pending", older_than_s=self.policy.pending_expiry_h * 3600.0)
        if gone:
            log.info("forgot %d pending key(s) not seen for %.0f h", gone, self.policy.pending_expiry_h)

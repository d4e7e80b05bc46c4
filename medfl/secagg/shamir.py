"""Shamir secret sharing of 32-byte secrets (mask seeds, X25519 secret keys) over GF(2^521 - 1).

A secret ``s`` (32 bytes, read as a little-endian integer < 2^256) is the constant term of a
random polynomial of degree ``t - 1`` over the prime field of the Mersenne prime
``p = 2^521 - 1``; share ``i`` (``x = i``, 1-based) is the polynomial's value at ``x``. Any ``t``
shares give the secret back by Lagrange interpolation at zero; ``t - 1`` shares are uniformly
distributed whatever the secret is, so they reveal nothing. Coefficients come from
:mod:`medfl.csprng`.

Compatibility: a :class:`Share` is ``(x, y)`` with ``y`` as 66 little-endian bytes; the field
and the encoding never change.

References
----------
.. [1] Shamir, "How to Share a Secret", Communications of the ACM 22(11), 1979.
.. [2] Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
   CCS 2017 (threshold sharing of the mask seeds and the secret keys).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from medfl import csprng
from medfl.errors import ShareError

__all__ = ["PRIME", "SECRET_BYTES", "SHARE_BYTES", "Share", "reconstruct", "split"]

PRIME = (1 << 521) - 1
SECRET_BYTES = 32
SHARE_BYTES = 66


@dataclass(frozen=True)
class Share:
    """One Shamir share: the polynomial's value ``y`` at the point ``x`` (1-based).

    Parameters
    ----------
    x : int
        Evaluation point, 1 <= x < p.
    y : bytes
        The value, ``SHARE_BYTES`` little-endian bytes, < p.
    """

    x: int
    y: bytes

    def __post_init__(self) -> None:
        """Check the point and the value's encoding."""
        if not 1 <= self.x < PRIME:
            raise ShareError(f"share point x={self.x} is outside 1..p-1")
        if len(self.y) != SHARE_BYTES or int.from_bytes(self.y, "little") >= PRIME:
            raise ShareError(f"share value must be {SHARE_BYTES} little-endian bytes < p, got {len(self.y)} bytes")


def _random_element() -> int:
    # 80 random bytes reduced mod p: statistical distance from uniform < 2^-119.
    return int.from_bytes(csprng.token_bytes(80), "little") % PRIME


def split(secret: bytes, *, n: int, t: int) -> list[Share]:
    """Split ``secret`` into ``n`` shares, any ``t`` of which give it back.

    Parameters
    ----------
    secret : bytes
        ``SECRET_BYTES`` bytes.
    n : int
        Number of shares (share ``i`` is for point ``x = i``, ``i = 1..n``).
    t : int
        Threshold, ``1 <= t <= n``.

    References
    ----------
    .. [1] Shamir 1979, section 2.
    """
    if len(secret) != SECRET_BYTES:
        raise ShareError(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= t <= n:
        raise ShareError(f"threshold t={t} must be between 1 and n={n}")
    coeffs = [int.from_bytes(secret, "little")] + [_random_element() for _ in range(t - 1)]
    shares = []
    for x in range(1, n + 1):
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        shares.append(Share(x=x, y=y.to_bytes(SHARE_BYTES, "little")))
    return shares


def _interpolate_at(points: list[tuple[int, int]], at: int) -> int:
    total = 0
    for j, (xj, yj) in enumerate(points):
        num, den = 1, 1
        for m, (xm, _) in enumerate(points):
            if m != j:
                num = num * (at - xm) % PRIME
                den = den * (xj - xm) % PRIME
        total = (total + yj * num * pow(den, -1, PRIME)) % PRIME
    return total


def reconstruct(shares: Iterable[Share], *, t: int) -> bytes:
    """Return the secret from at least ``t`` shares.

    Uses ``t`` of the shares to interpolate and checks every further share against the
    polynomial, so a corrupted share is caught when more than ``t`` are given.

    Parameters
    ----------
    shares : iterable of Share
        Shares with distinct points.
    t : int
        The threshold the secret was split with.

    Raises
    ------
    ShareError
        Fewer than ``t`` shares, two shares at one point, shares that do not lie on one
        polynomial of degree ``t - 1``, or a constant term that is not a 32-byte secret.

    References
    ----------
    .. [1] Shamir 1979 (Lagrange interpolation at zero).
    """
    given = list(shares)
    xs = [s.x for s in given]
    if len(set(xs)) != len(xs):
        dup = sorted({x for x in xs if xs.count(x) > 1})
        raise ShareError(f"duplicate share points {dup}; give each agent's share once")
    if len(given) < t:
        raise ShareError(f"{len(given)} share(s) given but the threshold is t={t}; the secret cannot be recovered")
    points = [(s.x, int.from_bytes(s.y, "little")) for s in given]
    base = points[:t]
    for x, y in points[t:]:
        if _interpolate_at(base, x) != y:
            raise ShareError(f"share at x={x} is inconsistent with the others (corrupted or from another secret)")
    value = _interpolate_at(base, 0)
    if value >= 1 << (8 * SECRET_BYTES):
        raise ShareError("the shares interpolate to a value that is not a 32-byte secret (inconsistent shares)")
    return value.to_bytes(SECRET_BYTES, "little")

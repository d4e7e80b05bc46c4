"""Shamir sharing: reconstruction from any t-subset, clear errors, t-1 shares reveal nothing."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medfl.errors import ShareError
from medfl.secagg.shamir import PRIME, SHARE_BYTES, Share, _interpolate_at, reconstruct, split


@settings(max_examples=40, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), n=st.integers(1, 9), data=st.data())
def test_any_t_subset_reconstructs(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    shares = split(secret, n=n, t=t)
    subset = data.draw(st.lists(st.sampled_from(shares), min_size=t, max_size=n, unique_by=lambda s: s.x))
    assert reconstruct(subset, t=t) == secret


def test_every_subset_of_5_choose_3() -> None:
    secret = bytes(range(32))
    shares = split(secret, n=5, t=3)
    for k in range(3, 6):
        for subset in itertools.combinations(shares, k):
            assert reconstruct(subset, t=3) == secret


def test_too_few_shares() -> None:
    shares = split(bytes(32), n=4, t=3)
    with pytest.raises(ShareError, match="threshold is t=3"):
        reconstruct(shares[:2], t=3)


def test_duplicate_shares() -> None:
    shares = split(bytes(32), n=4, t=2)
    with pytest.raises(ShareError, match="duplicate"):
        reconstruct([shares[0], shares[0], shares[1]], t=2)


def test_inconsistent_share_caught_when_extra_given() -> None:
    a = split(b"\x01" * 32, n=4, t=2)
    b = split(b"\x02" * 32, n=4, t=2)
    with pytest.raises(ShareError, match="inconsistent"):
        reconstruct([a[0], a[1], b[2]], t=2)


def test_malformed_share_and_arguments() -> None:
    with pytest.raises(ShareError):
        Share(x=0, y=bytes(SHARE_BYTES))
    with pytest.raises(ShareError):
        Share(x=1, y=bytes(3))
    with pytest.raises(ShareError):
        split(bytes(31), n=3, t=2)
    with pytest.raises(ShareError):
        split(bytes(32), n=3, t=4)


def test_fewer_than_t_shares_fit_every_candidate_secret() -> None:
    # t-1 shares plus ANY candidate secret determine exactly one polynomial of degree t-1,
    # so the t-1 shares are equally consistent with every secret: they reveal nothing.
    t = 3
    real = split(b"\xaa" * 32, n=5, t=t)[: t - 1]
    pts = [(s.x, int.from_bytes(s.y, "little")) for s in real]
    for candidate in (bytes(32), b"\xff" * 32, b"\xaa" * 32, bytes(range(32))):
        poly = [*pts, (0, int.from_bytes(candidate, "little"))]  # points through (0, candidate)
        for x, y in pts:
            assert _interpolate_at(poly, x) == y
        assert _interpolate_at(poly, 0) == int.from_bytes(candidate, "little")


def test_single_share_is_uniform_over_field_top_bits() -> None:
    # With t=2 one share is s + a*x for uniform a: its top bits are uniform whatever s is.
    counts = [0, 0]
    for _ in range(400):
        y = int.from_bytes(split(bytes(32), n=2, t=2)[0].y, "little")
        counts[y >> 520] += 1
    # P(top bit set) = (p - 2^520)/p ≈ 1/2; 400 draws -> 3-sigma band of ±30.
    assert abs(counts[1] - 200) < 45, counts
    assert PRIME.bit_length() == 521

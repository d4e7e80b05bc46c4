"""Whole SecAgg / SecAgg+ rounds between in-memory client and server state machines.

Exactness for every dropout pattern at every stage, aborts below the threshold, and what the
coordinator sees (uniform masked uploads, shares it cannot open).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medfl.errors import OutOfOrder, Rejected, SecAggAbort
from medfl.native import ring_sum
from medfl.secagg.client import SecAggClient
from medfl.secagg.keys import Scope
from medfl.secagg.masking import dequantize_sum, quantize_and_mask
from medfl.secagg.quantization import choose_spec, clip_to_norm
from medfl.secagg.server import SecAggServer

SCOPE = Scope(job="job", round=1)
DIM = 48


def _updates(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)  # test data only, not secret randomness
    return {f"a{i}": clip_to_norm(rng.normal(size=DIM).astype(np.float32), 1.0)[0] for i in range(n)}


def run_round(n: int, t: int, *, degree: int = 0, drop_after_advertise: Sequence[str] = (),
              drop_after_share: Sequence[str] = (), drop_after_upload: Sequence[str] = (),
              seen: list[object] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run one round; return (server's sum, plain sum of the survivors' quantized updates)."""
    spec = choose_spec(n_agents=n, clip_norm=1.0, frac_bits=16)
    updates = _updates(n)
    ids = sorted(updates)
    server = SecAggServer(agents=ids, threshold=t, degree=degree, spec=spec, scope=SCOPE)
    clients = {a: SecAggClient(agent=a, scope=SCOPE) for a in ids}
    record = seen if seen is not None else []

    def send(fn, msg):  # everything the server receives is recorded
        record.append(msg)
        fn(msg)

    for a in ids:
        send(server.receive_keys, clients[a].advertise())
    roster = server.close_advertise()
    alive = [a for a in ids if a not in drop_after_advertise]
    for a in alive:
        send(server.receive_shares, clients[a].share(roster))
    deliveries = server.close_sharing()
    alive = [a for a in alive if a not in drop_after_share]
    seeds = {a: 1000 + i for i, a in enumerate(ids)}
    for a in alive:
        send(server.receive_masked, clients[a].mask(deliveries[a], update=updates[a], spec=spec,
                                                     rounding_seed=seeds[a]))
    request = server.close_collection()
    for a in alive:
        if a not in drop_after_upload:
            send(server.receive_unmask, clients[a].unmask(request))
    got = server.finish()
    plain = ring_sum(np.stack([quantize_and_mask(updates[a], spec=spec, masks=[], nonce=roster.nonce,
                                                 rounding_seed=seeds[a]) for a in alive]))
    return got, dequantize_sum(plain, spec=spec)


def test_no_dropout_sum_is_exact_and_close_to_float_sum() -> None:
    got, want = run_round(4, 3)
    assert np.array_equal(got, want)
    assert np.allclose(got, sum(_updates(4).values()), atol=4 * 2.0**-15)


N, T = 5, 3
IDS = [f"a{i}" for i in range(N)]


def _patterns():
    for k1 in range(N + 1):
        for d1 in itertools.combinations(IDS, k1):
            rest = [a for a in IDS if a not in d1]
            for k2 in range(len(rest) + 1):
                for d2 in itertools.combinations(rest, k2):
                    rest2 = [a for a in rest if a not in d2]
                    for k3 in range(min(2, len(rest2)) + 1):
                        for d3 in itertools.combinations(rest2, k3):
                            yield d1, d2, d3


@pytest.mark.parametrize("degree", [0, 2])
def test_every_dropout_pattern_exact_or_clean_abort(degree: int) -> None:
    ran = aborted = 0
    for d1, d2, d3 in _patterns():
        if sum(map(len, (d1, d2, d3))) > 3 or (d3 and degree == 2 and len(d1) + len(d2) > 0):
            continue  # keep the run short; the SecAgg+ graph of 5 at k=2 tolerates one loss per neighbourhood
        survivors_every_stage = N - len(d1) - len(d2) - len(d3)
        if survivors_every_stage >= T and (degree == 0 or len(d1) + len(d2) + len(d3) <= 1):
            got, want = run_round(N, T, degree=degree, drop_after_advertise=d1, drop_after_share=d2,
                                  drop_after_upload=d3)
            assert np.array_equal(got, want), (d1, d2, d3)
            ran += 1
        elif survivors_every_stage < T:
            with pytest.raises(SecAggAbort):
                run_round(N, T, degree=degree, drop_after_advertise=d1, drop_after_share=d2, drop_after_upload=d3)
            aborted += 1
    assert ran > 10 and aborted > 5


@settings(max_examples=15, deadline=None)
@given(n=st.integers(3, 7), data=st.data())
def test_round_trip_property(n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(2, n))
    dropped = data.draw(st.lists(st.sampled_from([f"a{i}" for i in range(n)]), unique=True, max_size=n - t))
    got, want = run_round(n, t, drop_after_share=dropped)
    assert np.array_equal(got, want)


def test_what_the_coordinator_sees_is_uniform_and_unopenable() -> None:
    from medfl.secagg.messages import MaskedInput, ShareKeys

    seen: list[object] = []
    run_round(4, 3, seen=seen)
    uploads = [m for m in seen if isinstance(m, MaskedInput)]
    assert len(uploads) == 4
    for m in uploads:
        # A plain quantized update of norm <= 1 has top byte 0x00 or 0xff in every word;
        # a masked one is uniform: chi-square on the top byte (256 bins, 48 words is too few,
        # so test the top 4 bits: 16 bins).
        top = (m.masked.astype(np.uint64) >> np.uint64(m.masked.dtype.itemsize * 8 - 4)).astype(int)
        counts = np.bincount(top, minlength=16)
        expected = len(top) / 16
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 45.0, chi2  # 15 dof: p < 1e-4 beyond 45
    shares = [m for m in seen if isinstance(m, ShareKeys)]
    assert all(len(blob) > 60 for m in shares for blob in m.sealed.values())


def test_large_upload_passes_chi_square_on_bytes() -> None:
    spec = choose_spec(n_agents=4, clip_norm=1.0, frac_bits=16)
    from medfl.secagg.masking import MaskSeed

    update = np.zeros(1 << 16, dtype=np.float32)
    masked = quantize_and_mask(update, spec=spec, masks=[MaskSeed(seed=bytes(range(32)), sign=1)],
                               nonce=bytes(12), rounding_seed=1)
    counts = np.bincount(masked.view(np.uint8), minlength=256)
    expected = masked.nbytes / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 340.0, chi2  # 255 dof, p ~ 3e-4


def test_out_of_order_and_bad_messages() -> None:
    spec = choose_spec(n_agents=3, clip_norm=1.0, frac_bits=16)
    server = SecAggServer(agents=["a", "b", "c"], threshold=2, degree=0, spec=spec, scope=SCOPE)
    c = SecAggClient(agent="a", scope=SCOPE)
    with pytest.raises(OutOfOrder):
        c.unmask(__import__("medfl.secagg.messages", fromlist=["UnmaskRequest"]).UnmaskRequest(["a"], []))
    msg = c.advertise()
    server.receive_keys(msg)
    with pytest.raises(Rejected):
        server.receive_keys(msg)
    with pytest.raises(OutOfOrder):
        server.close_sharing()
    with pytest.raises(SecAggAbort):
        server.close_advertise()


def test_secagg_plus_ten_agents_with_dropouts() -> None:
    got, want = run_round(10, 6, degree=4, drop_after_share=["a3"], drop_after_upload=["a7"])
    assert np.array_equal(got, want)


def _to_share_stage(n: int = 3):
    spec = choose_spec(n_agents=n, clip_norm=1.0, frac_bits=16)
    ids = [f"a{i}" for i in range(n)]
    server = SecAggServer(agents=ids, threshold=2, degree=0, spec=spec, scope=SCOPE)
    clients = {a: SecAggClient(agent=a, scope=SCOPE) for a in ids}
    for a in ids:
        server.receive_keys(clients[a].advertise())
    roster = server.close_advertise()
    for a in ids:
        server.receive_shares(clients[a].share(roster))
    return spec, clients, server.close_sharing()


def test_relayed_share_tampered_or_redirected_is_rejected_by_the_agent() -> None:
    from medfl.secagg.messages import ShareDelivery

    spec, clients, deliveries = _to_share_stage()
    blob = deliveries["a0"].sealed["a1"]
    tampered = ShareDelivery(sealed={**deliveries["a0"].sealed, "a1": blob[:-1] + bytes([blob[-1] ^ 1])})
    with pytest.raises(Rejected):
        clients["a0"].mask(tampered, update=np.zeros(DIM, np.float32), spec=spec)
    redirected = ShareDelivery(sealed={"a1": deliveries["a2"].sealed["a1"]})  # a1's share for a2, sent to a0
    with pytest.raises(Rejected):
        clients["a0"].mask(redirected, update=np.zeros(DIM, np.float32), spec=spec)
    # a failed check leaves the state as it was: the honest delivery still works
    clients["a0"].mask(deliveries["a0"], update=np.zeros(DIM, np.float32), spec=spec)


def test_agent_refuses_an_unmask_request_that_asks_both_secrets_of_one_agent() -> None:
    from medfl.secagg.messages import UnmaskRequest

    spec, clients, deliveries = _to_share_stage()
    clients["a0"].mask(deliveries["a0"], update=np.zeros(DIM, np.float32), spec=spec)
    with pytest.raises(Rejected, match="both"):
        clients["a0"].unmask(UnmaskRequest(survivors=["a0", "a1"], dropped=["a1"]))
    with pytest.raises(Rejected, match="threshold"):
        clients["a0"].unmask(UnmaskRequest(survivors=["a0"], dropped=["a1", "a2"]))
    resp = clients["a0"].unmask(UnmaskRequest(survivors=["a0", "a1"], dropped=["a2"]))
    assert set(resp.self_mask_shares) == {"a0", "a1"} and set(resp.key_shares) == {"a2"}


@pytest.mark.parametrize("frac_bits", [16, 40])  # a 32-bit and a 64-bit ring
@pytest.mark.parametrize("length", [DIM, 70_001])  # one partial keystream tile; many tiles and an odd tail
def test_premask_built_ahead_gives_the_same_upload_as_one_fused_pass(frac_bits: int, length: int) -> None:
    import copy

    spec, clients, deliveries = _to_share_stage()
    spec = choose_spec(n_agents=3, clip_norm=1.0, frac_bits=frac_bits)
    update, _ = clip_to_norm(np.random.default_rng(5).standard_normal(length).astype(np.float32), 1.0)
    fused_client = copy.deepcopy(clients["a1"])
    pre = clients["a1"].premask(deliveries["a1"], length=length, spec=spec)
    assert pre.dtype == np.dtype(spec.dtype) and clients["a1"].stage == "shared"  # building masks moves no stage
    ahead = clients["a1"].mask(deliveries["a1"], update=update, spec=spec, rounding_seed=99, premask=pre)
    fused = fused_client.mask(deliveries["a1"], update=update, spec=spec, rounding_seed=99)
    assert ahead.masked.dtype == fused.masked.dtype and np.array_equal(ahead.masked, fused.masked)
    assert clients["a1"].stage == fused_client.stage == "masked"


def test_premask_refuses_a_bad_delivery_or_a_premask_that_does_not_fit() -> None:
    from medfl.secagg.messages import ShareDelivery

    spec, clients, deliveries = _to_share_stage()
    blob = deliveries["a0"].sealed["a1"]
    tampered = ShareDelivery(sealed={**deliveries["a0"].sealed, "a1": blob[:-1] + bytes([blob[-1] ^ 1])})
    with pytest.raises(Rejected):
        clients["a0"].premask(tampered, length=DIM, spec=spec)
    pre = clients["a0"].premask(deliveries["a0"], length=DIM, spec=spec)
    for bad in (pre[:-1], pre.astype(np.uint64)):
        with pytest.raises(Rejected, match="premask"):
            clients["a0"].mask(deliveries["a0"], update=np.zeros(DIM, np.float32), spec=spec, premask=bad)
    assert clients["a0"].stage == "shared"  # refused: nothing moved
    clients["a0"].mask(deliveries["a0"], update=np.zeros(DIM, np.float32), spec=spec, premask=pre)


def _pooled_round(pool, length: int, seed: int):
    """One 3-agent round with agents and server on ``pool``; (uploads, server sum, plain sum)."""
    spec = choose_spec(n_agents=3, clip_norm=1.0, frac_bits=16)
    ids = ["a0", "a1", "a2"]
    scope = Scope(job="job", round=seed)
    server = SecAggServer(agents=ids, threshold=2, degree=0, spec=spec, scope=scope, pool=pool)
    clients = {a: SecAggClient(agent=a, scope=scope, pool=pool) for a in ids}
    for a in ids:
        server.receive_keys(clients[a].advertise())
    roster = server.close_advertise()
    for a in ids:
        server.receive_shares(clients[a].share(roster))
    deliveries = server.close_sharing()
    rng = np.random.default_rng(seed)  # test data only
    updates = {a: clip_to_norm(rng.standard_normal(length).astype(np.float32), 1.0)[0] for a in ids}
    uploads = {}
    for i, a in enumerate(ids):
        pre = clients[a].premask(deliveries[a], length=length, spec=spec) if a == "a1" else None  # both paths
        sent = clients[a].mask(deliveries[a], update=updates[a], spec=spec, rounding_seed=7 + i, premask=pre)
        del pre
        server.receive_masked(sent)
        uploads[a] = sent.masked  # returned to the caller: held, as if still queued in ZeroMQ
    request = server.close_collection()
    for a in ids:
        server.receive_unmask(clients[a].unmask(request))
    plain = ring_sum(np.stack([quantize_and_mask(updates[a], spec=spec, masks=[], nonce=roster.nonce,
                                                 rounding_seed=7 + i) for i, a in enumerate(ids)]))
    return uploads, server.finish(), dequantize_sum(plain, spec=spec)


def test_rounds_on_a_vector_pool_are_exact_and_never_overwrite_an_upload_in_flight() -> None:
    from medfl.buffers import VectorPool

    pool = VectorPool(keep=6)
    length = 70_001
    first, got1, want1 = _pooled_round(pool, length, seed=1)
    kept = {a: v.copy() for a, v in first.items()}
    assert np.array_equal(got1, want1)
    # round 2 while round 1's uploads are still held (as if queued in ZeroMQ): no vector of theirs is reused
    second, got2, want2 = _pooled_round(pool, length, seed=2)
    assert np.array_equal(got2, want2)
    assert all(np.array_equal(first[a], kept[a]) for a in first)
    first_addrs = {v.__array_interface__["data"][0] for v in first.values()}
    assert not first_addrs & {v.__array_interface__["data"][0] for v in second.values()}
    del first, second
    # round 3 after the uploads are gone: the pool's vectors come back, and the sum is still exact
    held = len(pool)
    _, got3, want3 = _pooled_round(pool, length, seed=3)
    assert np.array_equal(got3, want3) and len(pool) == held


def test_quantize_and_mask_into_out_matches_and_refuses_what_does_not_fit() -> None:
    from medfl.secagg.masking import MaskSeed

    spec = choose_spec(n_agents=3, clip_norm=1.0, frac_bits=16)
    x, _ = clip_to_norm(np.random.default_rng(3).standard_normal(1001).astype(np.float32), 1.0)
    masks = [MaskSeed(bytes(range(32)), 1), MaskSeed(bytes(32), -1)]
    want = quantize_and_mask(x, spec=spec, masks=masks, nonce=b"n" * 12, rounding_seed=5)
    out = np.full(1001, 9, dtype=spec.dtype)
    got = quantize_and_mask(x, spec=spec, masks=masks, nonce=b"n" * 12, rounding_seed=5, out=out)
    assert got is out and np.array_equal(out, want)
    wide = np.zeros(1001, np.uint64 if spec.ring_bits == 32 else np.uint32)
    for bad, match in ((wide, "out must be"), (np.zeros(1000, spec.dtype), "out must be"),
                       (np.zeros(2002, spec.dtype)[::2], "out must be"), (x.view(spec.dtype), "overlaps"),
                       ([0] * 1001, "NumPy array")):
        with pytest.raises((ValueError, TypeError), match=match):
            quantize_and_mask(x, spec=spec, masks=masks, nonce=b"n" * 12, rounding_seed=5, out=bad)
    ro = np.zeros(1001, spec.dtype)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        quantize_and_mask(x, spec=spec, masks=masks, nonce=b"n" * 12, rounding_seed=5, out=ro)

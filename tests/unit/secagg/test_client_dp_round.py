"""Client-level DP inside a whole SecAgg round: each agent encodes and noises, the server sums.

The server's sum is exactly the survivors' encoded vectors (noise included: it never sees a
noise-free value), the decoded mean is the mean of the clipped updates plus noise of the
expected spread, a premask gives the same upload, and vectors of the wrong ring are refused.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from medfl.errors import Rejected
from medfl.native import ring_sum
from medfl.privacy.distributed_dp import ClientDP, encode_update
from medfl.secagg.client import SecAggClient
from medfl.secagg.keys import Scope
from medfl.secagg.quantization import QuantSpec
from medfl.secagg.server import SecAggServer
from medfl.secagg.vector import client_fit_length, pack_delta, unpack_client_fit

SCOPE = Scope(job="job", round=1)
DIM = 4096


def _round(updates: dict[str, np.ndarray], cdp: ClientDP, *, drop_after_share: tuple[str, ...] = (),
           premask: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray], QuantSpec]:
    ids = sorted(updates)
    bits = cdp.ring_bits_for(len(ids))
    spec = QuantSpec(ring_bits=bits, frac_bits=0, clip_norm=cdp.clip, n_agents=len(ids))
    server = SecAggServer(agents=ids, threshold=cdp.threshold, degree=0, spec=spec, scope=SCOPE)
    clients = {a: SecAggClient(agent=a, scope=SCOPE) for a in ids}
    for a in ids:
        server.receive_keys(clients[a].advertise())
    roster = server.close_advertise()
    for a in ids:
        server.receive_shares(clients[a].share(roster))
    deliveries = server.close_sharing()
    alive = [a for a in ids if a not in drop_after_share]
    encoded = {}
    for i, a in enumerate(alive):
        encoded[a] = encode_update(updates[a], cdp, ring_bits=bits, noise_key=bytes([i + 1]) * 32)
        pre = clients[a].premask(deliveries[a], length=DIM, spec=spec) if premask else None
        server.receive_masked(clients[a].mask(deliveries[a], update=encoded[a], spec=spec, premask=pre))
    request = server.close_collection()
    for a in alive:
        server.receive_unmask(clients[a].unmask(request))
    return server.finish(), encoded, spec


def _updates(n: int, norm: float = 3.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)  # test data only
    out = {}
    for i in range(n):
        v = rng.normal(size=DIM)
        out[f"a{i}"] = v * (norm / np.linalg.norm(v))
    return out


@pytest.mark.parametrize("premask", [False, True])
def test_sum_is_the_survivors_noised_encodings_and_decodes_to_the_clipped_mean(premask: bool) -> None:
    cdp = ClientDP(clip=1.0, noise_multiplier=1.0, dim=DIM, threshold=3)
    updates = _updates(4)
    got, encoded, spec = _round(updates, cdp, drop_after_share=("a3",), premask=premask)
    # what the server unmasked is exactly the ring sum of what the survivors encoded (noise and all)
    want = ring_sum(np.stack(list(encoded.values()))).view(np.int32 if spec.ring_bits == 32 else np.int64)
    assert np.array_equal(got, want.astype(np.float32))
    fit = unpack_client_fit(got, {"w": np.zeros(DIM, np.float32)}, gamma=cdp.gamma, survivors=3)
    assert fit.num_samples == 0 and fit.train_loss is None
    clipped_mean = sum(u / np.linalg.norm(u) for a, u in updates.items() if a != "a3") / 3
    resid = fit.mean_delta["w"].astype(np.float64) - clipped_mean
    # three shares of sigma each, scaled by gamma / 3; the rounding adds at most gamma per coordinate
    expected = math.sqrt(3) * cdp.sigma * cdp.gamma / 3
    assert 0.9 * expected < resid.std() < 1.1 * expected
    assert abs(resid.mean()) < 5 * expected / math.sqrt(DIM)


def test_the_noise_is_sized_for_the_threshold_not_the_survivors() -> None:
    # t shares carry the whole z * Delta_2: the round's zCDP at t survivors is 1/(2 z^2) (tau negligible)
    cdp = ClientDP(clip=1.0, noise_multiplier=2.0, dim=DIM, threshold=3)
    assert math.sqrt(3) * cdp.sigma == pytest.approx(2.0 * cdp.sensitivity)
    assert cdp.round_rho(3) == pytest.approx(1 / 8, rel=1e-9)
    assert cdp.round_rho(5) < cdp.round_rho(3)


def test_a_ring_vector_of_another_ring_is_refused() -> None:
    cdp = ClientDP(clip=1.0, noise_multiplier=1.0, dim=8, threshold=2)
    spec = QuantSpec(ring_bits=64, frac_bits=0, clip_norm=1.0, n_agents=2)
    ids = ["a0", "a1"]
    server = SecAggServer(agents=ids, threshold=2, degree=0, spec=spec, scope=SCOPE)
    clients = {a: SecAggClient(agent=a, scope=SCOPE) for a in ids}
    for a in ids:
        server.receive_keys(clients[a].advertise())
    roster = server.close_advertise()
    for a in ids:
        server.receive_shares(clients[a].share(roster))
    deliveries = server.close_sharing()
    v32 = encode_update(np.ones(8), cdp, ring_bits=32)
    with pytest.raises(Rejected, match="ring"):
        clients["a0"].mask(deliveries["a0"], update=v32, spec=spec)
    # the refusal changed nothing: the right vector still goes through
    clients["a0"].mask(deliveries["a0"], update=v32.astype(np.uint64), spec=spec)


def test_pack_delta_and_unpack_lengths() -> None:
    g = {"b": np.zeros(3, np.float32), "a": np.ones((2, 2), np.float32), "n": np.zeros(1, np.int64)}
    t = {"b": np.full(3, 2.0, np.float32), "a": np.ones((2, 2), np.float32), "n": np.ones(1, np.int64)}
    delta, norm = pack_delta(g, t)
    assert client_fit_length(g) == 7 == delta.size
    assert np.array_equal(delta, [0, 0, 0, 0, 2, 2, 2]) and norm == pytest.approx(math.sqrt(12))
    with pytest.raises(ValueError, match="shape"):
        pack_delta(g, {**t, "a": np.ones(4, np.float32)})
    bad = dict(t, b=np.array([np.nan, 0, 0], np.float32))
    with pytest.raises(Exception, match="non-finite"):
        pack_delta(g, bad)
    fit = unpack_client_fit(np.arange(7, dtype=np.float32), g, gamma=0.5, survivors=2)
    assert np.array_equal(fit.mean_delta["a"], [[0, 0.25], [0.5, 0.75]])
    with pytest.raises(Exception, match="elements"):
        unpack_client_fit(np.zeros(6), g, gamma=0.5, survivors=2)

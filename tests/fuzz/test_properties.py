"""Property-based fuzzing (hypothesis) of the decoders the coverage-guided suite (benchmarks/fuzz) runs.

Two kinds of property: (1) whatever the bytes or objects, each decoder raises only its typed
error (the fuzz targets' own crash rule, so a hypothesis failure is a fuzz crash); (2) what
the encoders make decodes back unchanged (envelopes of every dtype and shape, 0-d and empty
included; secure-aggregation messages).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz.seeds import seeds
from benchmarks.fuzz.targets import TARGETS, frames_of, pack_frames

SEEDS = seeds()
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on every odd value
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_every_seed_is_accepted_by_its_decoder():
    """The corpus is made of valid messages: the wire seeds decode, the files load."""
    from agent.config import load_config as load_agent
    from agent.pacs.scoring import check_dataset, read_instance
    from coordinator.config import load_config as load_coordinator
    from medfl.jobspec import load_job
    from medfl.secagg.envelopes import decode as decode_secagg
    from medfl.wire.envelope import decode

    for name in ("envelope", "secagg", "smpc_frames"):
        for data in SEEDS[name]:
            env = decode(frames_of(data), max_bytes=1 << 26)
            if name == "secagg":
                decode_secagg(env, agent="a")
    for data in SEEDS["dicom"]:
        assert check_dataset(read_instance(data)[0]) is None
    agent_toml, coordinator_toml, job_toml = SEEDS["toml_config"]
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        for load, data in ((load_agent, agent_toml), (load_coordinator, coordinator_toml), (load_job, job_toml)):
            path = f"{d}/x.toml"
            open(path, "wb").write(data)
            load(path)
    for name, items in SEEDS.items():
        for data in items:
            TARGETS[name].run(data)


@st.composite
def _mutated(draw, name):
    """A seed of ``name`` with a few byte-level edits (flip, insert, delete, truncate, splice)."""
    data = bytearray(draw(st.sampled_from(SEEDS[name])))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(("flip", "insert", "delete", "truncate", "byte")))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and data:
            data[at] = draw(st.sampled_from((0, 1, 0x7F, 0x80, 0xC0, 0xFF)))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)


@pytest.mark.parametrize("name", list(TARGETS))
@FAST
@given(data=st.data())
def test_mutated_seeds_raise_only_typed_errors(name, data):
    TARGETS[name].run(data.draw(_mutated(name)))


@pytest.mark.parametrize("name", list(TARGETS))
@FAST
@given(raw=st.binary(max_size=512))
def test_random_bytes_raise_only_typed_errors(name, raw):
    TARGETS[name].run(raw)


_PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)


@FAST
@given(body=st.dictionaries(st.sampled_from(("name", "version", "models", "min_parties", "train_samples",
                                             "val_samples", "num_samples", "train_loss", "seconds", "epsilon",
                                             "delta", "n", "auc", "accuracy", "loss", "reason", "budget")) | st.text(),
                            _PLAIN, max_size=8))
def test_bodies_and_hello_of_any_plain_values_raise_only_malformed(body):
    from medfl.errors import MalformedMessage
    from medfl.wire import bodies
    from medfl.wire.hello import parse_hello

    for parse in (bodies.parse_update, bodies.parse_metrics, bodies.parse_refuse, bodies.parse_report, parse_hello):
        try:
            parse(body)
        except MalformedMessage:
            pass


_DTYPES = ("float32", "float64", "int32", "int64", "uint8", "uint32", "uint64")


@st.composite
def _tensor(draw):
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))  # () is a 0-d tensor, a 0 an empty one
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    raw = draw(st.binary(min_size=math.prod(shape) * dtype.itemsize, max_size=math.prod(shape) * dtype.itemsize))
    arr = np.frombuffer(raw, dtype).reshape(shape)
    return arr.astype(arr.dtype.newbyteorder(">")) if draw(st.booleans()) else arr  # big-endian input is converted


@FAST
@given(tensors=st.dictionaries(st.text(max_size=8), _tensor(), max_size=4),
       body=st.dictionaries(st.text(max_size=8), _PLAIN, max_size=4), version=st.sampled_from((1, 2)),
       job=st.none() | st.text(max_size=8), rnd=st.none() | st.integers(0, 2**40), seq=st.integers(0, 2**62))
def test_envelope_round_trip_keeps_every_tensor_and_field(tensors, body, version, job, rnd, seq):
    from medfl.wire import Envelope, MessageType
    from medfl.wire.envelope import decode, encode

    env = Envelope(type=MessageType.UPDATE, job=job, round=rnd, seq=seq, body=body, tensors=tensors, version=version)
    frames = [bytes(f) for f in encode(env)]
    got = decode(frames, max_bytes=1 << 26)
    assert (got.job, got.round, got.seq, got.version, list(got.tensors)) == (job, rnd, seq, version, list(tensors))
    assert repr(got.body) == repr(body)  # repr: NaN == NaN
    for name, arr in tensors.items():
        assert got.tensors[name].shape == arr.shape and got.tensors[name].dtype.name == arr.dtype.name
        assert np.array_equal(got.tensors[name], arr, equal_nan=arr.dtype.kind == "f")
    TARGETS["envelope"].run(pack_frames(frames))  # the harness's round-trip invariant holds too


@FAST
@given(sealed=st.dictionaries(st.text(min_size=1, max_size=12), st.binary(max_size=200), max_size=5),
       survivors=st.lists(st.text(min_size=1, max_size=12), max_size=5), attempt=st.integers(1, 9),
       phase=st.sampled_from(("fit", "evaluate")))
def test_secagg_messages_round_trip_through_the_wire(sealed, survivors, attempt, phase):
    from medfl.secagg import envelopes, messages
    from medfl.wire.envelope import decode, encode

    s = envelopes.Session(job="j", round=1, attempt=attempt, phase=phase)
    for msg in (messages.ShareKeys(agent="a", sealed=sealed), messages.UnmaskRequest(survivors=survivors, dropped=[])):
        env = decode([bytes(f) for f in encode(envelopes.encode(msg, s))], max_bytes=1 << 26)
        assert envelopes.Session.of(env) == s
        assert envelopes.decode(env, agent="a") == msg

"""One regression test per crash the fuzz suite found (benchmarks/fuzz): each input once escaped as a raw exception.

Each test feeds the crashing input to the product code directly (not through the fuzz harness)
and asserts the typed error the module documents, with a message that says what is wrong.
"""

from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest

from benchmarks.fuzz.seeds import seeds
from benchmarks.fuzz.targets import TARGETS, smpc_keys
from medfl.errors import ConfigError, DataError, MalformedMessage, SessionAborted


# ---- TOML configs: bytes that are not UTF-8 (tomllib raised UnicodeDecodeError) --------------------------------------
@pytest.mark.parametrize("loader", ["agent", "coordinator", "job"])
def test_config_that_is_not_utf8_is_a_config_error(tmp_path, loader):
    from agent.config import load_config as load_agent
    from coordinator.config import load_config as load_coordinator
    from medfl.jobspec import load_job

    path = tmp_path / "x.toml"
    path.write_bytes(b'[agent]\nname = "st-mary\xff"\n')  # a Latin-1 editor's save
    load = {"agent": load_agent, "coordinator": load_coordinator, "job": load_job}[loader]
    with pytest.raises(ConfigError, match=r"byte 23 is not UTF-8.*save the file as UTF-8"):
        load(path)


# ---- TOML configs: a path "~name" of a user who does not exist (pathlib raised RuntimeError) ---------------------
@pytest.mark.parametrize("loader", ["agent", "coordinator"])
def test_a_tilde_path_of_an_unknown_user_is_a_config_error(tmp_path, loader):
    from agent.config import load_config as load_agent
    from coordinator.config import load_config as load_coordinator

    path = tmp_path / "x.toml"
    table = "agent" if loader == "agent" else "coordinator"
    path.write_text(f'[{table}]\nstate_dir = "~tate"\n')  # the fuzzer's input, cut down
    load = {"agent": load_agent, "coordinator": load_coordinator}[loader]
    with pytest.raises(ConfigError, match=rf"{table}\.state_dir: cannot expand '~tate'.*write the path in full"):
        load(path)


# ---- dealer material records whose array spec is not [name, dtype, shape] (raised ValueError/TypeError) ------------
def _record(head: object) -> bytes:
    raw = msgpack.packb(head)
    return struct.pack("<I", len(raw)) + raw


@pytest.mark.parametrize("head", [
    {"i": 0, "k": "mul_triple", "t": [["a", "uint64"]]},            # two fields: unpacking raised ValueError
    {"i": 0, "k": "mul_triple", "t": [5]},                          # not a list: TypeError
    {"i": 0, "k": "mul_triple", "t": [["a", ["uint64"], [2]]]},     # unhashable dtype: TypeError
    {"i": 0, "k": "mul_triple", "t": [["a", "uint64", 7]]},         # shape not a list: TypeError
    {"i": "zero", "k": "mul_triple", "t": []},                      # index not an int: ValueError
    {"k": "mul_triple", "t": []},                                   # no index: KeyError
    {"i": 0, "k": "mul_triple", "t": [["a", "uint64", [True]]]},    # a bool is not a dimension
])
def test_malformed_material_record_is_malformed_message(head):
    from medfl.smpc.dealer.material import unpack_items

    with pytest.raises(MalformedMessage, match="material"):
        unpack_items(_record(head))


def test_valid_material_still_unpacks():
    from medfl.smpc.dealer.material import unpack_items

    items = unpack_items(seeds()["material"][0])
    assert [k for _, k, _ in items] == ["weight_mask", "matmul_triple", "trunc_pair", "relu_keys", "mul_triple"]


# ---- DICOM: an element pydicom cannot convert, read lazily after the parse (raised from check_dataset) --------------
def _dicom_with(tag: tuple[int, int], vr: bytes, value: bytes) -> bytes:
    d = seeds()["dicom"][0]  # explicit VR little endian
    at = d.index(struct.pack("<HH", 0x0028, 0x0010))  # insert before Rows, keeping tag order
    return d[:at] + struct.pack("<HH", *tag) + vr + struct.pack("<H", len(value)) + value + d[at:]


@pytest.mark.parametrize("vr,value,why", [(b"ZZ", b"1 ", "Unknown Value Representation"),
                                          (b"IS", b"abcd", "invalid literal")])
def test_dicom_attribute_pydicom_cannot_read_is_refused_with_0xC000(vr, value, why):
    from agent.pacs.scoring import STATUS_CANNOT_UNDERSTAND, check_dataset, read_instance

    ds, _, _ = read_instance(_dicom_with((0x0028, 0x0008), vr, value))  # NumberOfFrames
    with pytest.warns(UserWarning) if vr == b"IS" else _nothing():
        rejection = check_dataset(ds)
    assert rejection is not None and rejection.status == STATUS_CANNOT_UNDERSTAND
    assert "cannot read the data set's attributes" in rejection.reason and why in rejection.reason


def test_dicom_sop_class_of_unknown_vr_is_a_data_error():
    """The SOP Class UID was read after the parse's try in PacsService.accept, so this escaped it."""
    from agent.pacs.scoring import read_instance

    d = seeds()["dicom"][0]
    tag = struct.pack("<HH", 0x0008, 0x0016)
    at = d.index(tag, 132 + 12)  # the data set's SOPClassUID, not the file meta's
    bad = d[:at + 4] + b"ZZ" + d[at + 6:]
    with pytest.raises(DataError, match="cannot parse the DICOM data set: NotImplementedError"):
        read_instance(bad)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---- relayed dealer chunks with fields of the wrong type (raised ValueError/TypeError/KeyError in the party) --------
def _opener():
    from medfl.smpc.dealer.material import Opener, Sealer

    keys = smpc_keys()
    sealer = Sealer(dealer_secret=keys["dealer"].private_bytes_raw(),
                    party_public=keys["party"].public_key().public_bytes_raw(), session="s-1", party=0)
    opener = Opener(party_secret=keys["party"], dealer_public=keys["dealer"].public_key().public_bytes_raw(),
                    session="s-1", party=0)
    return sealer, opener


@pytest.mark.parametrize("body,tensors,bad", [
    ({"session": "s-1", "seq": "zero", "last": True}, True, "seq"),
    ({"session": "s-1", "last": True}, True, "seq"),
    ({"session": "s-1", "seq": 0, "last": True}, False, "tensor c"),
    ({"session": ["s-1"], "seq": 0, "last": True}, True, "session"),
    ({"session": "s-1", "seq": 0, "last": "yes"}, True, "last"),
    ({"session": "s-1", "seq": True, "last": True}, True, "seq"),
])
def test_relayed_chunk_with_bad_fields_aborts_the_session(body, tensors, bad):
    sealer, opener = _opener()
    seq, ct = sealer.seal(b"material", last=True)
    t = {"c": np.frombuffer(ct, np.uint8)} if tensors else {}
    with pytest.raises(SessionAborted, match=f"bad {bad}") as info:
        opener.open_message(body, t)
    assert info.value.code == "plan" and opener.next_seq == 0  # nothing consumed: state untouched


def test_relayed_chunk_with_good_fields_opens():
    sealer, opener = _opener()
    seq, ct = sealer.seal(b"material", last=True)
    assert opener.open_message({"session": "s-1", "seq": seq, "last": True},
                               {"c": np.frombuffer(ct, np.uint8)}) == b"material"
    assert opener.done


def test_fuzz_harness_agrees_on_every_regression_input():
    """The fuzz targets now pass each former crash (a typed error inside, nothing escaping)."""
    TARGETS["toml_config"].run(b'[agent]\nname = "st-mary\xff"\n')
    TARGETS["material"].run(_record({"i": 0, "k": "mul_triple", "t": [["a", "uint64"]]}))
    TARGETS["dicom"].run(_dicom_with((0x0028, 0x0008), b"ZZ", b"1 "))


# ---- envelopes: a 0-d tensor came back 1-d (np.ascontiguousarray promotes 0-d arrays) -------------------------------
@pytest.mark.parametrize("version", [1, 2])
def test_zero_dimensional_tensor_keeps_its_shape_on_the_wire(version):
    from medfl.wire import Envelope, MessageType
    from medfl.wire.envelope import decode, encode

    env = Envelope(type=MessageType.UPDATE, tensors={"step": np.array(7, np.int64), "lr": np.float32(0.5)},
                   version=version)
    frames = [bytes(f) for f in encode(env)]
    assert msgpack.unpackb(frames[0])["tensors"] == [["step", "int64", []], ["lr", "float32", []]]
    got = decode(frames, max_bytes=1 << 20)
    assert got.tensors["step"].shape == () and int(got.tensors["step"]) == 7
    assert got.tensors["lr"].shape == () and float(got.tensors["lr"]) == 0.5


def test_zero_dimensional_material_array_keeps_its_shape():
    from medfl.smpc.dealer.material import pack_items, unpack_items

    (_, _, arrays), = unpack_items(pack_items([(0, "mul_triple", {"a": np.array(3, np.uint64)})]))
    assert arrays["a"].shape == () and int(arrays["a"]) == 3


# ---- the same DICOM inputs through the real PACS intake (PacsService.accept, as a C-STORE handler calls it) ---------
def test_pacs_accept_refuses_unreadable_attributes_and_keeps_the_evidence(tmp_path):
    from agent.config import AgentConfig
    from agent.pacs.scoring import STATUS_CANNOT_UNDERSTAND
    from agent.pacs.service import PacsService
    from medfl import config

    cfg = config.parse(AgentConfig, {
        "agent": {"name": "h", "state_dir": str(tmp_path / "state")},
        "coordinator": {"endpoint": "tcp://127.0.0.1:1"}, "data": {"path": str(tmp_path)},
        "transport": {"curve": False}, "pacs": {"enabled": True}})
    service = PacsService(cfg)
    d = seeds()["dicom"][0]
    at = d.index(struct.pack("<HH", 0x0008, 0x0016), 132 + 12)
    bad = [_dicom_with((0x0028, 0x0008), b"ZZ", b"1 "), _dicom_with((0x0028, 0x0008), b"IS", b"abcd"),
           d[:at + 4] + b"ZZ" + d[at + 6:]]
    try:
        with pytest.warns(UserWarning):
            statuses = [service.accept(data, source="fuzz")[0] for data in bad]
        assert service.accept(d, source="fuzz")[0] == 0  # the valid seed is still accepted and queued
    finally:
        service.audit.close()
    assert statuses == [STATUS_CANNOT_UNDERSTAND] * 3
    kept = sorted(p.read_bytes() for p in (tmp_path / "state" / "pacs" / "quarantine").glob("*.dcm"))
    assert kept == sorted(bad)  # every refused original kept byte for byte

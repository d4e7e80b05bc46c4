"""Weights as named float32 arrays and safetensors checkpoints (atomic, strict, no pickle)."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import torch

from medfl.models import create_model
from medfl.models.weights import load_checkpoint, load_state_arrays, save_checkpoint, state_arrays


@pytest.fixture()
def arrays():
    torch.manual_seed(0)
    return state_arrays(create_model("cnn"))


def test_arrays_are_contiguous_float32_in_a_stable_order(arrays):
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in arrays.values())
    assert list(arrays) == list(create_model("cnn").state_dict())
    assert list(state_arrays(create_model("cnn"))) == list(arrays)


def test_round_trip_into_a_fresh_model(arrays):
    model = create_model("cnn")
    load_state_arrays(model, arrays)
    for k, v in state_arrays(model).items():
        np.testing.assert_array_equal(v, arrays[k])


def test_strict_loading_names_every_problem(arrays):
    model = create_model("cnn")
    first, second = list(arrays)[:2]
    bad = {k: v for k, v in arrays.items() if k != first}
    bad["not.a.weight"] = np.zeros(1, np.float32)
    bad[second] = np.zeros((1, 2, 3), np.float32)
    with pytest.raises(ValueError) as info:
        load_state_arrays(model, bad)
    text = str(info.value)
    assert f"missing=['{first}']" in text and "not.a.weight" in text and second in text
    with pytest.raises(ValueError, match="missing"):
        load_state_arrays(create_model("resnet18"), arrays)


def test_checkpoint_round_trip_with_metadata(tmp_path, arrays):
    path = tmp_path / "ck" / "round-0001.safetensors"
    meta = {"job_id": "j1", "round": "1", "model": "cnn"}
    save_checkpoint(path, arrays, meta)
    loaded, got = load_checkpoint(path)
    assert got == meta and set(loaded) == set(arrays)
    for k in arrays:
        np.testing.assert_array_equal(loaded[k], arrays[k])
    # safetensors: 8-byte little-endian header length, then a JSON header (no pickle anywhere)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert header["__metadata__"] == meta
    assert not list(path.parent.glob(".*.tmp"))


def test_metadata_must_be_strings(tmp_path, arrays):
    with pytest.raises(TypeError, match="round"):
        save_checkpoint(tmp_path / "x.safetensors", arrays, {"round": 1})  # type: ignore[dict-item]


def test_save_is_atomic(tmp_path, arrays, monkeypatch):
    path = tmp_path / "global.safetensors"
    save_checkpoint(path, arrays, {"round": "1"})
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    changed = {k: v + 1 for k, v in arrays.items()}
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, changed, {"round": "2"})
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["global.safetensors"]  # no temp file left

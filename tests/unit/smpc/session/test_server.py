"""The served model's plan: traced once, split into preparation and per-image parts, cached by announcement."""

from __future__ import annotations

import json

import torch

from medfl.models import create_model
from medfl.smpc.evaluator import Calibration
from medfl.smpc.session.party import trace_plan
from medfl.smpc.session.server import ServedModel

CAL = Calibration(8.0, ((1e-3, 50.0),) * 4)


def _model():
    torch.manual_seed(0)  # test weights only
    return create_model("cnn", width=2).eval()


def test_plan_split_and_cache_reuse(tmp_path):
    cache = tmp_path / "m.smpc-plan.json"
    served = ServedModel.register(name="cnn", kwargs={"width": 2}, model=_model(), in_shape=(1, 32, 32),
                                  calibration=CAL, cache=cache)
    plan, rounds = trace_plan(_model(), (1, 32, 32), CAL)
    assert served.plan_for(1) == plan
    assert all(e.kind == "weight_mask" for e in served.prep_plan) and served.rounds_per_image == rounds - len(
        served.prep_plan)
    two = served.plan_for(2)  # a second image reuses the session's weight masks (references stay valid)
    assert len(two) == len(served.prep_plan) + 2 * len(served.image_plan)
    assert all(two[e.extra].kind == "weight_mask" for e in two if e.kind == "matmul_triple")
    doc = json.loads(cache.read_text())
    again = ServedModel.register(name="cnn", kwargs={"width": 2}, model=_model(), in_shape=(1, 32, 32),
                                 calibration=CAL, cache=cache)
    assert again.plan_for(1) == plan and again.rounds_per_image == served.rounds_per_image
    # a cache for another announcement (other ranges) is not used; a damaged one is ignored
    other = Calibration(8.0, ((1e-4, 500.0),) * 4)
    wider = ServedModel.register(name="cnn", kwargs={"width": 2}, model=_model(), in_shape=(1, 32, 32),
                                 calibration=other, cache=cache)
    assert wider.plan_for(1) == trace_plan(_model(), (1, 32, 32), other)[0]  # traced for its own ranges
    assert json.loads(cache.read_text())["key"] != doc["key"]
    cache.write_text("{not json")
    fixed = ServedModel.register(name="cnn", kwargs={"width": 2}, model=_model(), in_shape=(1, 32, 32),
                                 calibration=CAL, cache=cache)
    assert fixed.plan_for(1) == plan

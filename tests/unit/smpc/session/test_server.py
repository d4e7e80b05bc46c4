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
    assert set(json.loads(cache.read_text())["plans"]) > set(doc["plans"])  # its own plan, added beside the first
    cache.write_text("{not json")
    fixed = ServedModel.register(name="cnn", kwargs={"width": 2}, model=_model(), in_shape=(1, 32, 32),
                                 calibration=CAL, cache=cache)
    assert fixed.plan_for(1) == plan


def test_cache_is_used_and_other_files_are_traced_again_at_info(tmp_path, monkeypatch, caplog):
    import logging

    from medfl.smpc.session import plan_cache, server

    cache = tmp_path / "m.smpc-plan.json"
    traced = []
    real = server.trace_plan

    def counting(*a, **kw):
        traced.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(server, "trace_plan", counting)

    def register(cal=CAL):
        return ServedModel.register(name="cnn", kwargs={"width": 2}, model=_model(), in_shape=(1, 32, 32),
                                    calibration=cal, cache=cache)

    first = register()
    with caplog.at_level(logging.INFO):
        again = register()
    assert len(traced) == 1, "the second start must read the plan from the cache, not trace it"
    assert again.plan_for(2) == first.plan_for(2) and again.rounds_per_image == first.rounds_per_image
    assert "plan read from cache" in caplog.text
    # two announcements share the file (e.g. `medfl infer` and the coordinator calibrating differently)
    other = Calibration(8.0, ((1e-4, 500.0),) * 4)
    register(other)
    register(other)
    register()
    assert len(traced) == 2
    assert len(json.loads(cache.read_text())["plans"]) == 2
    # the format of earlier versions (prep and image apart) is traced again quietly, then rewritten
    plan, _ = trace_plan(_model(), (1, 32, 32), CAL)
    prep = sum(e.kind == "weight_mask" for e in plan)
    cache.write_text(json.dumps({"key": "x", "prep": plan_cache.plan_to_wire(plan[:prep]),
                                 "image": plan_cache.plan_to_wire(plan[prep:]), "rounds": 3}))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert register().plan_for(1) == plan
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "not usable (format 'none'" in caplog.text
    assert json.loads(cache.read_text())["format"] == plan_cache.FORMAT

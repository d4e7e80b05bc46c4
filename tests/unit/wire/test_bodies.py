"""The typed job-message bodies: every rule, every refusal naming its field, unknown fields ignored."""

from __future__ import annotations

import math

import pytest

from medfl.errors import MalformedMessage
from medfl.wire.bodies import MAX_REASON, parse_metrics, parse_refuse, parse_report, parse_update


def test_update_accepts_what_the_agent_sends():
    b = parse_update({"num_samples": 48, "train_loss": 0.41, "seconds": 2.5, "epsilon": 1.2, "delta": 1e-5,
                      "future_field": [1, 2]})
    assert (b.num_samples, b.train_loss, b.seconds, b.epsilon, b.delta) == (48, 0.41, 2.5, 1.2, 1e-5)
    empty = parse_update({})
    assert empty.num_samples == 0 and math.isnan(empty.train_loss) and empty.epsilon is None


@pytest.mark.parametrize("body, field", [
    ({"num_samples": "lots"}, "num_samples"), ({"num_samples": True}, "num_samples"),
    ({"num_samples": -1}, "num_samples"), ({"num_samples": 10**12}, "num_samples"),
    ({"num_samples": 3.0}, "num_samples"), ({"train_loss": "low"}, "train_loss"),
    ({"train_loss": -0.1}, "train_loss"), ({"epsilon": math.nan}, "epsilon"), ({"epsilon": math.inf}, "epsilon"),
    ({"epsilon": -1}, "epsilon"), ({"delta": 2.0}, "delta"), ({"seconds": math.inf}, "seconds"),
])
def test_update_refusals_name_the_field(body, field):
    with pytest.raises(MalformedMessage, match=field):
        parse_update(body)


def test_every_bad_field_is_named_at_once():
    with pytest.raises(MalformedMessage) as err:
        parse_metrics({"n": -4, "auc": 3.0, "accuracy": "all", "loss": -1.0})
    for field in ("n must", "auc must", "accuracy must", "loss must"):
        assert field in str(err.value)
    with pytest.raises(MalformedMessage, match="must be a map"):
        parse_update([1, 2])


def test_metrics_take_integral_floats_and_nan():
    m = parse_metrics({"n": 32.0, "auc": math.nan, "accuracy": 0.5, "loss": 0.7})
    assert m.n == 32 and math.isnan(m.auc) and m.as_dict()["n"] == 32.0
    with pytest.raises(MalformedMessage, match="n must"):
        parse_metrics({"n": 3.5})
    with pytest.raises(MalformedMessage, match="n must"):
        parse_metrics({"n": math.inf})
    assert parse_metrics({"n": 1, "auc": 0.0, "accuracy": 1.0, "loss": 0}).accuracy == 1.0


def test_refuse_reason_is_text_of_bounded_length():
    r = parse_refuse({"reason": "policy: min_parties 3 > 2", "budget": True})
    assert r.reason.startswith("policy") and r.budget
    assert parse_refuse({}).reason == "no reason given"
    long = parse_refuse({"reason": "x" * (MAX_REASON + 50)})
    assert len(long.reason) < MAX_REASON + 40 and "50 more characters" in long.reason
    with pytest.raises(MalformedMessage) as err:
        parse_refuse({"reason": {"a": 1}, "budget": "yes"})
    assert "reason" in str(err.value) and "budget" in str(err.value)


def test_privacy_report():
    assert parse_report(None).epsilon is None and parse_report({}).delta is None
    r = parse_report({"epsilon": 2.0, "delta": 1e-5})
    assert (r.epsilon, r.delta) == (2.0, 1e-5)
    for bad in ({"epsilon": "2"}, {"epsilon": -1.0}, {"epsilon": 1.0, "delta": math.nan}, "report"):
        with pytest.raises(MalformedMessage):
            parse_report(bad)


def test_metrics_body_takes_segmentation_metrics_and_refuses_unknown_or_out_of_range_ones():
    m = parse_metrics({"n": 4, "loss": 0.8, "dice": 0.7, "hd95": 3.5, "dice_1": 0.6, "dice_3": math.nan})
    assert m.extra["dice"] == 0.7 and m.extra["hd95"] == 3.5 and math.isnan(m.extra["dice_3"])
    assert m.as_dict()["dice_1"] == 0.6 and math.isnan(m.auc)
    with pytest.raises(MalformedMessage, match="dice must be"):
        parse_metrics({"n": 4, "dice": 1.5})
    with pytest.raises(MalformedMessage, match="unknown metric 'secret'"):
        parse_metrics({"n": 4, "secret": 1.0})
    with pytest.raises(MalformedMessage, match="unknown metric 'dice_65'"):
        parse_metrics({"n": 4, "dice_65": 0.5})

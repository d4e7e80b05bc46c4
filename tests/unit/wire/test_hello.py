"""The HELLO schema and the untrusted-text rules, checked field by field."""

from __future__ import annotations

import pytest

from medfl.errors import MalformedMessage
from medfl.safetext import check_name, escape, fold_name
from medfl.wire.hello import MAX_COUNT, Hello, parse_hello


def test_a_good_hello_is_typed():
    h = parse_hello({"name": " St Mary ", "version": "0.1.0", "models": ["cnn"], "min_parties": 2,
                     "train_samples": 48, "val_samples": 0, "future_field": {"ignored": True}},
                    known_models={"cnn", "resnet18"})
    assert h == Hello(name="St Mary", version="0.1.0", models=("cnn",), min_parties=2, train_samples=48)


def test_missing_optional_fields_take_defaults():
    assert parse_hello({"name": "a"}) == Hello(name="a")


@pytest.mark.parametrize("body, field", [
    ({"name": ""}, "name"),
    ({}, "name"),
    ({"name": 5}, "name"),
    ({"name": "a\nb"}, "name"),
    ({"name": "a\x1b[0m"}, "name"),
    ({"name": "a\u200bb"}, "name"),
    ({"name": "x" * 65}, "name"),
    ({"name": "a", "train_samples": "lots"}, "train_samples"),
    ({"name": "a", "train_samples": -1}, "train_samples"),
    ({"name": "a", "val_samples": MAX_COUNT + 1}, "val_samples"),
    ({"name": "a", "val_samples": 1.5}, "val_samples"),
    ({"name": "a", "min_parties": 0}, "min_parties"),
    ({"name": "a", "min_parties": True}, "min_parties"),
    ({"name": "a", "models": {"cnn": 1}}, "models"),
    ({"name": "a", "models": ["cnn", 3]}, "models"),
    ({"name": "a", "models": ["vgg"]}, "models"),
    ({"name": "a", "models": ["cnn"] * 65}, "models"),
    ({"name": "a", "version": "1.0\n"}, "version"),
    ({"name": "a", "version": ["1"]}, "version"),
])
def test_bad_fields_are_refused_by_name(body, field):
    with pytest.raises(MalformedMessage, match=field):
        parse_hello(body, known_models={"cnn"})


def test_every_bad_field_is_named_at_once():
    with pytest.raises(MalformedMessage) as e:
        parse_hello({"name": "\x00", "train_samples": "x", "min_parties": -3})
    msg = str(e.value)
    assert "name" in msg and "train_samples" in msg and "min_parties" in msg
    assert "\x00" not in msg


def test_escape_makes_text_one_inert_line():
    s = escape("a\nb\r\tc\x1b[31m\u202e\\n\U000e0001" + "z" * 300, limit=30)
    assert "\n" not in s and "\x1b" not in s and "\u202e" not in s and "\U000e0001" not in s
    assert s.startswith("a\\nb\\r\\tc\\x1b[31m\\u202e\\\\n\\U000e0001")
    assert s.endswith("...(+" + str(len("a\nb\r\tc\x1b[31m\u202e\\n\U000e0001") + 300 - 30) + " chars)")
    assert escape(12) == "12" and escape("plain name") == "plain name"


def test_names_fold_for_comparison():
    assert fold_name("ＬＥＧＩＴ-A") == fold_name("legit-a")
    assert fold_name("St  Mary") == fold_name("st mary")
    assert check_name("ﬁne")[0] == "fine"  # NFKC folds the ligature
    assert check_name("ok")[1] is None

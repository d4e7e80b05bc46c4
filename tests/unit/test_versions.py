"""Which agent versions a coordinator serves: its own minor and the one before, anything else named."""

from __future__ import annotations

import pytest

from medfl.versions import agent_refusal, parse_version


def test_parse_version():
    assert parse_version("0.1.0") == (0, 1, 0)
    assert parse_version("1.2") == (1, 2, 0)
    assert parse_version("1.2.3rc1") == (1, 2, 3) and parse_version("1.2.3+local") == (1, 2, 3)
    for bad in ("", "one", "1", "1.x", "v1.2"):
        assert parse_version(bad) is None


@pytest.mark.parametrize("agent", ["2.5.0", "2.5.7", "2.4.0", "2.4.99"])
def test_own_minor_and_one_older_are_served(agent):
    assert agent_refusal(agent, "2.5.1") is None


@pytest.mark.parametrize("agent, says", [
    ("2.3.9", "too old for this coordinator .* upgrade medfl-agent to 2.5"),
    ("1.9.0", "too old .* upgrade medfl-agent to 2.5"),
    ("2.6.0", "newer than this coordinator .* upgrades medfl-coordinator to 2.6"),
    ("3.0.0", "newer .* upgrades medfl-coordinator to 3.0"),
    ("", "no usable version"), ("dev", "no usable version"),
])
def test_others_are_told_what_to_upgrade(agent, says):
    import re

    why = agent_refusal(agent, "2.5.1")
    assert why is not None and re.search(says, why), why


def test_first_minor_serves_only_itself_and_a_dev_coordinator_serves_all():
    assert agent_refusal("1.0.3", "1.0.0") is None
    assert "upgrade medfl-agent to 1.0" in str(agent_refusal("0.9.0", "1.0.0"))
    assert agent_refusal("7.7.7", "dev") is None

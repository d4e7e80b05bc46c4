"""Invitations against the coordinator's record: issue, redeem once, and every refusal names its reason."""

from __future__ import annotations

import json
import os
import re
import stat
import time

import pytest

from coordinator.invitations import invitation_table, issue, public_endpoint, redeem
from coordinator.store import Store
from medfl.errors import ConfigError, MalformedMessage, Rejected
from medfl.wire import fingerprint, generate_keypair
from medfl.wire.invitation import read_invitation


@pytest.fixture
def store():
    s = Store(":memory:")
    yield s
    s.close()


def _issue(store, tmp_path, name="St Mary", expires_s=3600.0):
    coord = generate_keypair()
    return issue(store, name=name, federation="fed", endpoint="tcp://127.0.0.1:7777", coordinator_key=coord.public,
                 expires_s=expires_s, out=tmp_path)


def _body(inv, agent_key: bytes, **changes):
    fields = {**inv.signed_fields(), "mac": inv.mac, **changes}
    return {"invitation": fields, "public_key": agent_key.decode("ascii")}


def _no_clash(fp, name):
    return None


def test_issue_writes_a_private_file_whose_key_is_admitted(store, tmp_path):
    inv, path = _issue(store, tmp_path)
    assert path.name == "st-mary.medfl"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = read_invitation(path)
    assert again == inv and again.keys.public == inv.keys.public
    assert store.is_invitation_key(inv.keys.public.decode()) and store.node_status(inv.keys.public.decode()) is None
    with pytest.raises(ConfigError, match="exists"):
        issue(store, name="St Mary", federation="fed", endpoint="tcp://h:1", coordinator_key=generate_keypair().public,
              expires_s=60, out=path)


def test_bad_invite_arguments_are_all_named(store, tmp_path):
    with pytest.raises(ConfigError) as err:
        issue(store, name="evil\nline", federation="f", endpoint="http://x", coordinator_key=generate_keypair().public,
              expires_s=0, out=tmp_path)
    text = str(err.value)
    assert "--name" in text and "--expires" in text and "--endpoint" in text


def test_redeem_approves_the_agent_key_once(store, tmp_path):
    inv, _ = _issue(store, tmp_path)
    agent = generate_keypair()
    done = redeem(store, inv.fingerprint, _body(inv, agent.public), name_taken=_no_clash)
    assert done.node.status == "approved" and done.node.name == "St Mary" and not done.again
    assert store.is_approved(agent.public.decode())
    # the same key again (its reply was lost): answered, not refused
    assert redeem(store, inv.fingerprint, _body(inv, agent.public), name_taken=_no_clash).again
    other = generate_keypair()
    with pytest.raises(Rejected, match="already used on .* by key " + re.escape(fingerprint(agent.public)[:23])):
        redeem(store, inv.fingerprint, _body(inv, other.public), name_taken=_no_clash)
    assert not store.is_approved(other.public.decode())
    assert "used" in invitation_table(store)[1]
    assert [e["kind"] for e in store.events()] == ["enrolled"]


def test_an_edited_file_is_named_field_by_field(store, tmp_path):
    inv, _ = _issue(store, tmp_path)
    agent = generate_keypair()
    with pytest.raises(Rejected, match="edited: expires, name"):
        redeem(store, inv.fingerprint, _body(inv, agent.public, name="St Marz", expires=inv.expires + 86400),
               name_taken=_no_clash)
    with pytest.raises(Rejected, match="MAC does not verify"):
        redeem(store, inv.fingerprint, _body(inv, agent.public, mac="0" * 64), name_taken=_no_clash)
    with pytest.raises(Rejected, match="MAC does not verify"):
        redeem(store, inv.fingerprint, _body(inv, agent.public, mac=None), name_taken=_no_clash)
    assert not store.is_approved(agent.public.decode()) and store.invitation(inv.fingerprint).used_at is None


def test_expired_revoked_clashing_and_malformed_are_refused(store, tmp_path):
    inv, _ = _issue(store, tmp_path, expires_s=1)
    agent = generate_keypair()
    time.sleep(1.1)
    with pytest.raises(Rejected, match="expired on"):
        redeem(store, inv.fingerprint, _body(inv, agent.public), name_taken=_no_clash)
    inv2, _ = _issue(store, tmp_path, name="Royal")
    store.approve_node(fingerprint(agent.public), agent.public.decode())
    store.revoke_node(fingerprint(agent.public))
    with pytest.raises(Rejected, match="revoked"):
        redeem(store, inv2.fingerprint, _body(inv2, agent.public), name_taken=_no_clash)
    fresh = generate_keypair()
    with pytest.raises(Rejected, match="already used by another agent"):
        redeem(store, inv2.fingerprint, _body(inv2, fresh.public), name_taken=lambda fp, n: "SHA256:other")
    with pytest.raises(MalformedMessage):
        redeem(store, inv2.fingerprint, {"invitation": "x"}, name_taken=_no_clash)
    with pytest.raises(MalformedMessage, match="public_key"):
        redeem(store, inv2.fingerprint, {"invitation": {}, "public_key": "short"}, name_taken=_no_clash)
    with pytest.raises(Rejected, match="not an invitation key"):
        redeem(store, fingerprint(fresh.public), _body(inv2, fresh.public), name_taken=_no_clash)
    assert store.invitation(inv2.fingerprint).used_at is None


def test_prune_drops_spent_invitations(store, tmp_path):
    inv, _ = _issue(store, tmp_path, expires_s=1)
    _issue(store, tmp_path, name="Royal")
    time.sleep(1.1)
    assert store.prune_invitations(older_than_s=0) == 1
    assert not store.is_invitation_key(inv.keys.public.decode())
    assert len(store.invitations()) == 1


def test_read_invitation_names_what_is_wrong(tmp_path):
    p = tmp_path / "x.medfl"
    p.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not JSON"):
        read_invitation(p)
    p.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ConfigError, match="not a medfl invitation"):
        read_invitation(p)
    p.write_text(json.dumps({"medfl_invitation": 9}))
    with pytest.raises(ConfigError, match="upgrade medfl-agent"):
        read_invitation(p)
    p.write_text(json.dumps({"medfl_invitation": 1, "id": 3, "expires": True, "secret": "#" * 40,
                             "endpoint": "http://x"}))
    with pytest.raises(ConfigError) as err:
        read_invitation(p)
    for key in ("id", "expires", "secret", "coordinator_key", "endpoint", "mac"):
        assert key in str(err.value)
    with pytest.raises(ConfigError, match="cannot read"):
        read_invitation(tmp_path / "missing.medfl")


def test_public_endpoint_replaces_a_wildcard_host():
    assert public_endpoint("tcp://10.0.0.5:7777") == "tcp://10.0.0.5:7777"
    host = public_endpoint("tcp://0.0.0.0:7777")
    assert host.startswith("tcp://") and host.endswith(":7777") and "0.0.0.0" not in host

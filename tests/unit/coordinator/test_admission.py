"""Admission bounds against a real SQLite store and a controlled clock; the schema 3 -> 5 migration."""

from __future__ import annotations

import sqlite3

import pytest

from coordinator.admission import REPORT_EVERY_S, Admission, TokenBucket
from coordinator.config import EnrollmentSection
from coordinator.store import SCHEMA_VERSION, Store
from medfl.errors import NotFound, StateError
from medfl.wire import fingerprint, generate_keypair


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _keys(n):
    return [generate_keypair().public for _ in range(n)]


def _admission(tmp_path, **policy):
    store = Store(tmp_path / "c.sqlite")
    clock = Clock()
    return store, clock, Admission(store, EnrollmentSection(**policy), fingerprint=fingerprint, clock=clock)


def test_token_bucket_refills_at_its_rate():
    b = TokenBucket(rate=1.0, burst=3.0, t=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take(0.5) is False and b.take(1.0) is True


def test_per_address_and_global_limits_and_the_cap(tmp_path):
    store, clock, adm = _admission(tmp_path, max_pending=6, new_keys_per_minute=8, new_keys_per_minute_per_address=3)
    keys = _keys(20)
    assert not any(adm(k, "10.0.0.1") for k in keys[:5])
    assert store.count_nodes("pending") == 3  # the address's burst
    for i, k in enumerate(keys[5:12]):
        adm(k, f"10.0.1.{i}")
    assert store.count_nodes("pending") == 6  # the cap (the global bucket had 8)
    clock.t += 3600
    for i, k in enumerate(keys[12:]):
        adm(k, f"10.0.2.{i}")
    assert store.count_nodes("pending") == 6
    # a key on record only bumps its counters
    first = store.nodes()[0]
    adm(first.public_key.encode(), "10.0.0.1")
    assert store.node(first.fingerprint).refusals == 2


def test_approved_keys_are_admitted_and_invite_only_writes_nothing(tmp_path):
    store, clock, adm = _admission(tmp_path, mode="invite-only")
    k_ok, k_new = _keys(2)
    store.approve_node(fingerprint(k_ok), k_ok.decode())
    assert adm(k_ok, "127.0.0.1") is True
    assert adm(k_new, "127.0.0.1") is False
    assert [n.status for n in store.nodes()] == ["approved"]


def test_refusals_are_reported_once_a_period(tmp_path, caplog):
    store, clock, adm = _admission(tmp_path)
    caplog.set_level("WARNING", logger="coordinator.admission")
    for k in _keys(50):
        adm(k, "127.0.0.1")
    clock.t += REPORT_EVERY_S
    adm.tick()
    reports = [r.getMessage() for r in caplog.records if "in the last" in r.getMessage()]
    assert len(reports) == 1 and "refused 50 handshake(s) from 50 unapproved key(s)" in reports[0]
    assert "46 not recorded (rate limit for the address)" in reports[0]
    assert len(caplog.records) == 4 + 1  # one line per recorded key, one report


def test_pending_keys_expire(tmp_path):
    store, clock, adm = _admission(tmp_path, pending_expiry_h=1.0)
    adm(_keys(1)[0], "127.0.0.1")
    assert store.count_nodes("pending") == 1
    with store._tx() as db:  # age the record by two hours
        db.execute("UPDATE nodes SET last_seen = last_seen - 7200, first_seen = first_seen - 7200")
    clock.t += 61
    adm(_keys(1)[0], "127.0.0.2")
    assert store.count_nodes("pending") == 1  # the old one forgotten, the new one recorded


def test_forget_and_prune(tmp_path):
    store = Store(tmp_path / "c.sqlite")
    a, b = _keys(2)
    store.see_node(fingerprint(a), a.decode())
    store.approve_node(fingerprint(b), b.decode())
    with pytest.raises(StateError, match="revoke it first"):
        store.forget_node(fingerprint(b))
    with pytest.raises(NotFound):
        store.forget_node("SHA256:" + "A" * 43)
    assert store.forget_node(fingerprint(a)).status == "pending"
    store.see_node(fingerprint(a), a.decode())
    assert store.prune_nodes(status="pending", older_than_s=3600) == 0
    assert store.prune_nodes(status="pending", older_than_s=0) == 1
    with pytest.raises(StateError):
        store.prune_nodes(status="approved")


def test_schema_3_database_is_migrated(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '3');
        CREATE TABLE nodes (fingerprint TEXT PRIMARY KEY, public_key TEXT NOT NULL, name TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'revoked')), first_seen REAL NOT NULL,
            approved_at REAL, last_seen REAL, last_refused REAL, refusals INTEGER NOT NULL DEFAULT 0);
        INSERT INTO nodes VALUES ('SHA256:x', 'k', 'st-mary', 'approved', 1.0, 1.0, 1.0, NULL, 0);
    """)
    db.commit()
    db.close()
    store = Store(path)
    assert store.get_meta("schema_version") == str(SCHEMA_VERSION) == "5"
    assert store.invitations() == []  # schema 5: the invitations table exists on a migrated file
    assert store.node_status("k") == "approved" and store.node("SHA256:x").name == "st-mary"
    plan = store._query("EXPLAIN QUERY PLAN SELECT status FROM nodes WHERE public_key=?", ("k",))
    assert any("nodes_by_public_key" in str(tuple(r)) for r in plan)
    store.close()

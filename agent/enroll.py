"""``medfl-agent enroll INVITATION``: keys, agent.toml and approval in one step.

The agent reads the invitation (:mod:`medfl.wire.invitation`), makes its own CURVE key pair
(kept if a previous try made one and wrote no agent.toml yet, so a lost reply can be retried
with the same key), pins the coordinator's key from the invitation, connects with the
invitation's key pair and sends ENROLL with its own public key. On ENROLLED it writes
agent.toml with the safe default policy of ``medfl-agent init`` and prints its fingerprint.
Every failure says which it is: the coordinator refused the invitation (its reason: used,
expired, edited...), the invitation key was refused at the handshake (forgotten or edited
secret), or no handshake at all (unreachable, or a server without the invitation's
coordinator key).
"""

from __future__ import annotations

import pathlib
import time
from dataclasses import dataclass
from typing import Any

from agent.config import detect_data_kind
from medfl.errors import AuthError, Rejected, StateError
from medfl.safetext import escape
from medfl.wire import ClientChannel, Envelope, MessageType, fingerprint, generate_keypair, read_keypair
from medfl.wire.invitation import Invitation, read_invitation
from medfl.wire.keys import KeyPair, write_keypair

__all__ = ["EnrollResult", "enroll"]


@dataclass(frozen=True)
class EnrollResult:
    """What ``enroll`` did: the files written and the approved key."""

    config: pathlib.Path
    public_key_file: pathlib.Path
    fingerprint: str
    name: str
    coordinator: str


def _agent_keys(root: pathlib.Path, *, force: bool) -> tuple[KeyPair, pathlib.Path, pathlib.Path]:
    """Return the agent's key pair: a fresh one, or the one a previous unfinished try left."""
    keys = root / "keys"
    pub, sec = keys / "agent.key", keys / "agent.key_secret"
    if sec.exists() and not force:
        return read_keypair(sec), pub, sec
    pair = generate_keypair()
    pub, sec = write_keypair(keys, "agent", pair, overwrite=force)
    return pair, pub, sec


def enroll(path: pathlib.Path, *, root: pathlib.Path, data: pathlib.Path, force: bool = False,
           timeout_s: float = 30.0) -> tuple[EnrollResult, dict[str, Any], pathlib.Path]:
    """Redeem the invitation at ``path``; returns the result, the config document to write and its path.

    Raises
    ------
    ConfigError
        The file is not an invitation.
    StateError
        agent.toml exists (use ``force``), or the invitation has expired by this machine's clock.
    AuthError
        The handshake with the invitation key was refused, or never completed.
    Rejected
        The coordinator refused the invitation, with its reason.
    """
    inv = read_invitation(path)
    cfg_path = root / "agent.toml"
    if cfg_path.exists() and not force:
        raise StateError(f"{cfg_path} exists: this folder has an agent already; use --force to replace it (a new "
                         "key, which the invitation then approves) or enroll into another --dir")
    if time.time() > inv.expires + 300:  # the coordinator decides; this only saves a pointless connection
        raise StateError(f"the invitation expired on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(inv.expires))}"
                         " (by this machine's clock); ask the operator for a new one")
    root.mkdir(parents=True, exist_ok=True)
    pair, pub, _ = _agent_keys(root, force=force)
    reply = _exchange(inv, pair, timeout_s=timeout_s)
    pinned = root / "keys" / "coordinator.key"
    pinned.write_text(f'public-key = "{inv.coordinator_key}"\n')
    name = str(reply.get("name") or inv.name)
    doc: dict[str, Any] = {
        "agent": {"name": name, "state_dir": "state"},
        "coordinator": {"endpoint": inv.endpoint, "public_key_file": "keys/coordinator.key"},
        "keys": {"secret_key_file": "keys/agent.key_secret"},
        "data": {"kind": detect_data_kind(data.resolve()), "path": str(data.resolve())},
        "policy": {"allowed_models": ["cnn", "resnet18"], "min_parties": 2, "require_secure_aggregation": True},
        "training": {"torch_threads": 0, "device": "cpu"},
        "transport": {"curve": True, "max_message_mb": 256},
    }
    result = EnrollResult(config=cfg_path, public_key_file=pub, fingerprint=fingerprint(pair.public),
                          name=name, coordinator=str(reply.get("coordinator") or inv.federation))
    return result, doc, cfg_path


def _exchange(inv: Invitation, pair: KeyPair, *, timeout_s: float) -> dict[str, Any]:
    """Connect with the invitation's key, send ENROLL, return the ENROLLED body."""
    body = {"invitation": {**inv.signed_fields(), "mac": inv.mac}, "public_key": pair.public.decode("ascii")}
    with ClientChannel(connect=inv.endpoint, keys=inv.keys, server_public_key=inv.coordinator_key.encode("ascii")
                       ) as ch:
        deadline = time.monotonic() + timeout_s
        sent = False
        while time.monotonic() < deadline:
            env = ch.recv(200)
            if ch.auth_failed:
                raise AuthError(f"the coordinator at {inv.endpoint} refused the invitation's key at the handshake: "
                                "the invitation was withdrawn or pruned there, or its secret was edited; ask the "
                                "operator for a new invitation")
            if ch.connected and not sent:
                sent = ch.send(Envelope(type=MessageType.ENROLL, body=body))
            if env is None:
                continue
            if env.type == MessageType.ENROLLED:
                return dict(env.body)
            if env.type == MessageType.ERROR:
                raise Rejected(f"the coordinator refused the invitation: {escape(env.body.get('message'), limit=600)}")
    if not sent:
        raise AuthError(f"no CURVE handshake with {inv.endpoint} in {timeout_s:.0f} s: the coordinator is not "
                        "reachable from here (check the address, the firewall, that it runs), or the server there "
                        "does not hold the coordinator key named in the invitation (an invitation from another "
                        "coordinator, or an edited file)")
    raise AuthError(f"the coordinator at {inv.endpoint} did not answer the enrollment in {timeout_s:.0f} s; try "
                    "again (the same key is kept, so a retry is safe)")

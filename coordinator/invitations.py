"""Invitations from the coordinator's side: ``nodes invite`` writes one, the daemon redeems it.

``issue`` makes a fresh CURVE key pair for the invitation, records its public half (the
allow-list admits it, see :class:`coordinator.admission.Admission`) and the signed fields, and
writes the file 0600. ``redeem`` answers the ENROLL an agent sends over that key: the
coordinator's record decides, the file is only compared with it, so a refusal says exactly
which of these it is: not an invitation key, an edited file (naming the fields that differ),
a forged MAC, already used (when and by which key), expired (when), a revoked agent key, a
name another hospital uses. On success the agent's own key is approved under the
invitation's name and the invitation is spent, in one transaction.

The MAC key is 32 random bytes kept in the database's meta table (whoever can read the
database can approve keys anyway); it never leaves the coordinator.
"""

from __future__ import annotations

import hmac
import os
import pathlib
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coordinator.store import InvitationRow, NodeRow, Store
from medfl.errors import ConfigError, MalformedMessage, Rejected, StateError
from medfl.safetext import check_name, escape
from medfl.wire import fingerprint, generate_keypair
from medfl.wire.invitation import SUFFIX, Invitation, invitation_mac
from medfl.wire.keys import _valid_z85

__all__ = ["Enrolled", "issue", "mac_key", "public_endpoint", "redeem"]

_MAC_META = "invitation_mac_key"
#: the longest an invitation may be valid
MAX_EXPIRY_S = 90 * 86400.0


def mac_key(store: Store) -> bytes:
    """The coordinator's invitation MAC key (created at the first invitation)."""
    text = store.get_meta(_MAC_META)
    if text is None:
        store.set_meta(_MAC_META, secrets.token_hex(32))
        text = store.get_meta(_MAC_META)
    return bytes.fromhex(str(text))


def public_endpoint(bind: str) -> str:
    """The endpoint agents reach for a ``bind`` address: a wildcard host becomes this machine's FQDN."""
    head, sep, port = bind.rpartition(":")
    host = head.removeprefix("tcp://")
    if bind.startswith("tcp://") and sep and host in ("0.0.0.0", "*", "[::]", "::"):
        return f"tcp://{socket.getfqdn()}:{port}"
    return bind


def issue(store: Store, *, name: str, federation: str, endpoint: str, coordinator_key: bytes, expires_s: float,
          out: pathlib.Path) -> tuple[Invitation, pathlib.Path]:
    """Issue an invitation for hospital ``name`` and write it to ``out`` (a file, or a folder for ``<name>.medfl``).

    Raises
    ------
    ConfigError
        A bad name, expiry or endpoint, or the output file exists already.
    """
    problems: list[tuple[str, str]] = []
    name, why = check_name(name)
    if why is not None:
        problems.append(("--name", why))
    if not 1.0 <= expires_s <= MAX_EXPIRY_S:
        problems.append(("--expires", f"must be between 1s and {MAX_EXPIRY_S / 86400:.0f}d, got {expires_s:.0f} s"))
    if not endpoint.startswith(("tcp://", "ipc://")):
        problems.append(("--endpoint", f"must be a ZeroMQ endpoint such as tcp://fl.example.org:7777, got "
                                       f"{endpoint!r}"))
    if problems:
        raise ConfigError(problems)
    if out.is_dir():
        out = out / (_slug(name) + SUFFIX)
    pair = generate_keypair()
    now = int(time.time())
    fields: dict[str, Any] = {"id": secrets.token_hex(8), "federation": federation, "endpoint": endpoint,
                              "coordinator_key": coordinator_key.decode("ascii"), "name": name, "created": now,
                              "expires": now + int(expires_s)}
    assert pair.secret is not None
    inv = Invitation(**fields, secret=pair.secret.decode("ascii"), mac=invitation_mac(mac_key(store), fields))
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError([("--out", f"{out} exists; choose another file or remove it")]) from None
    with os.fdopen(fd, "w") as f:
        f.write(inv.to_text())
    store.add_invitation(InvitationRow(id=inv.id, public_key=pair.public.decode("ascii"),
                                       fingerprint=fingerprint(pair.public), name=name, created=now,
                                       expires=inv.expires, fields=fields, used_at=None, used_by=None))
    return inv, out


def _slug(name: str) -> str:
    keep = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return "-".join(p for p in keep.split("-") if p)[:48] or "invitation"


@dataclass(frozen=True)
class Enrolled:
    """An agent key approved by an invitation (``again``: the same key redeemed it before)."""

    node: NodeRow
    invitation_id: str
    again: bool = False


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def redeem(store: Store, invitation_fp: str, body: Any, *,
           name_taken: Callable[[str, str], str | None]) -> Enrolled:
    """Redeem the invitation whose key sent ENROLL with ``body``.

    Parameters
    ----------
    store : Store
        The coordinator's state.
    invitation_fp : str
        Fingerprint of the sender's key (from the transport, never from the body).
    body : dict
        ``{"invitation": <signed fields>, "public_key": <the agent's Z85 key>}``.
    name_taken : callable(fingerprint, name) -> str or None
        The fingerprint of another agent already using ``name``.

    Raises
    ------
    MalformedMessage
        The body is not of that form.
    Rejected
        The invitation cannot be redeemed; the message says why and what to do.
    """
    inv = store.invitation(invitation_fp)
    if inv is None:
        raise Rejected("this connection's key is not an invitation key of this coordinator; enroll with the "
                       "invitation file the operator wrote ('medfl-coordinator nodes invite')")
    fields, agent_key = _parse_body(body)
    again = _check(store, inv, fields, agent_key)
    agent_fp = fingerprint(agent_key)
    if again:
        return Enrolled(node=store.node(agent_fp), invitation_id=inv.id, again=True)
    clash = name_taken(agent_fp, inv.name)
    if clash is not None:
        raise Rejected(f"the invitation's name {escape(inv.name, limit=64)!r} is already used by another agent "
                       f"({clash[:23]}); ask the operator for an invitation under another name")
    try:
        node = store.redeem_invitation(inv.id, agent_fp, agent_key, inv.name)
    except StateError as exc:
        raise Rejected(f"{exc}; ask the operator for a new invitation") from exc
    return Enrolled(node=node, invitation_id=inv.id)


def _parse_body(body: Any) -> tuple[dict[str, Any], str]:
    if not isinstance(body, dict) or not isinstance(body.get("invitation"), dict):
        raise MalformedMessage("enroll needs 'invitation' (the file's signed fields) and 'public_key'")
    key = body.get("public_key")
    if not isinstance(key, str) or not _valid_z85(key):
        raise MalformedMessage("enroll's 'public_key' must be the agent's 40-character Z85 public key")
    return body["invitation"], key


def _check(store: Store, inv: InvitationRow, fields: dict[str, Any], agent_key: str) -> bool:
    """Refuse an unusable invitation; True when ``agent_key`` already redeemed it (a retry)."""
    mac = fields.get("mac")
    signed = {k: v for k, v in fields.items() if k != "mac"}
    expected = invitation_mac(mac_key(store), inv.fields)
    if not isinstance(mac, str) or not hmac.compare_digest(mac, invitation_mac(mac_key(store), signed)):
        changed = sorted(k for k in inv.fields if signed.get(k) != inv.fields[k])
        if changed:
            raise Rejected(f"the invitation file was edited: {', '.join(changed)} differ(s) from what this "
                           "coordinator issued; use the file as the operator sent it, or ask for a new one")
        raise Rejected("the invitation's MAC does not verify (the file was edited); use the file as the operator "
                       "sent it, or ask for a new one")
    if not hmac.compare_digest(expected, mac):  # unreachable unless the record changed; refuse, never trust
        raise Rejected("the invitation does not match this coordinator's record; ask for a new one")
    agent_fp = fingerprint(agent_key)
    if inv.used_at is not None:
        if inv.used_by == agent_fp:
            return True
        raise Rejected(f"this invitation was already used on {_when(inv.used_at)} by key {str(inv.used_by)[:23]}; "
                       f"an invitation admits one agent: ask the operator for a new one "
                       f"('medfl-coordinator nodes invite --name ...')")
    if time.time() > inv.expires:
        raise Rejected(f"this invitation expired on {_when(inv.expires)}; ask the operator for a new one "
                       f"('medfl-coordinator nodes invite --name ... --expires 72h')")
    if store.node_status(agent_key) == "revoked":
        raise Rejected(f"the agent key {agent_fp[:23]} was revoked by the operator; an invitation does not undo a "
                       "revocation: create a new key ('medfl-agent enroll --force') and a new invitation")
    return False


def invite_command(cfg: Any, store: Store, args: Any, expires_s: float) -> list[str]:
    """``nodes invite``: issue the invitation and say what to do with it (the lines to print)."""
    from medfl.wire import read_keypair

    if not cfg.transport.curve or cfg.keys.secret_key_file is None:
        raise ConfigError([("transport.curve", "invitations need transport.curve = true and keys.secret_key_file")])
    keys = read_keypair(cfg.keys.secret_key_file)
    endpoint = args.endpoint or public_endpoint(cfg.coordinator.bind)
    inv, path = issue(store, name=args.name, federation=cfg.coordinator.name, endpoint=endpoint,
                      coordinator_key=keys.public, expires_s=expires_s, out=args.out)
    return [f"wrote {path} (0600): invitation {inv.id} for {escape(inv.name, limit=64)!r}, valid until "
            f"{_when(inv.expires)}, for one agent",
            f"agents will connect to {endpoint}{'' if args.endpoint else ' (use --endpoint to change it)'}",
            "hand the file to the hospital as you would a password (it admits one agent); there they run:",
            f"  medfl-agent enroll {path.name} --data /path/to/images",
            "'medfl-coordinator nodes invitations' shows whether it was used, and by which key"]


def invitation_table(store: Store) -> list[str]:
    """The lines of ``nodes invitations``: id, name, state, expiry."""
    rows = store.invitations()
    if not rows:
        return ["no invitations: 'medfl-coordinator nodes invite --name NAME' writes one"]
    now = time.time()
    lines = [f"{'ID':17s} {'NAME':24s} {'STATE':60s} EXPIRES"]
    for r in rows:
        if r.used_at is not None:
            state = f"used {_when(r.used_at)} by {str(r.used_by)[:23]}"
        else:
            state = "expired" if now > r.expires else "open"
        lines.append(f"{r.id:17s} {escape(r.name, limit=64):24s} {state:60s} {_when(r.expires)}")
    return lines

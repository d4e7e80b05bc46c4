"""``medfl-agent doctor``: check what an agent needs, and for each failure say the fix.

Checks, in order: agent.toml parses; the key files exist, the secret is readable by its owner
only (0600) in a 0700 folder and matches the public key; the data folder exists; disk space
under state_dir; the clock against the coordinator (as the running daemon measured it at its
last WELCOME); the coordinator is reachable and admits this key (a CurveZMQ handshake with the
agent's own key, no message sent, so a running daemon's session is not disturbed); with PACS
enabled, the DICOM port is free or held by this agent's daemon, and the PACS destination answers
a C-ECHO. Each check gives ``ok``, ``warn`` or ``fail``; the command exits 1 if any failed.
"""

from __future__ import annotations

import pathlib
import shutil
import socket
import stat
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["Check", "diagnose", "format_checks"]

#: free space under state_dir below which doctor fails (a round's models and the PACS inbox live there)
MIN_FREE_BYTES = 1 * 2**30
#: and below which it warns
LOW_FREE_BYTES = 5 * 2**30
#: clock difference to the coordinator that doctor warns about (invitation expiry, logs, certificates)
MAX_SKEW_S = 60.0


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, ``ok`` / ``warn`` / ``fail``, what was seen, and the fix."""

    name: str
    state: str
    detail: str
    fix: str = ""


def _keys(cfg: Any) -> list[Check]:
    from medfl.wire import fingerprint, read_keypair, read_public_key

    out: list[Check] = []
    sec = cfg.keys.secret_key_file
    if not cfg.transport.curve:
        return [Check("keys", "warn", "transport.curve = false: traffic is not encrypted (tests only)",
                      "set transport.curve = true")]
    if sec is None or not pathlib.Path(sec).exists():
        return [Check("keys", "fail", f"secret key file {sec} not found", "run 'medfl-agent enroll' or 'init' again")]
    mode = stat.S_IMODE(pathlib.Path(sec).stat().st_mode)
    if mode & 0o077:
        out.append(Check("secret key mode", "fail", f"{sec} is mode {mode:04o}: other users can read this "
                         "hospital's key", f"chmod 600 {sec}"))
    else:
        out.append(Check("secret key mode", "ok", f"{sec} is mode {mode:04o}"))
    folder = pathlib.Path(sec).parent
    fmode = stat.S_IMODE(folder.stat().st_mode)
    if fmode & 0o077:
        out.append(Check("key folder mode", "warn", f"{folder} is mode {fmode:04o}", f"chmod 700 {folder}"))
    try:
        pair = read_keypair(sec)
        out.append(Check("agent key", "ok", f"fingerprint {fingerprint(pair.public)}"))
    except Exception as exc:  # noqa: BLE001 - the reason is the finding
        out.append(Check("agent key", "fail", str(exc), "restore the key file, or enroll again with a new key"))
    try:
        read_public_key(cfg.coordinator.public_key_file)
        out.append(Check("coordinator key", "ok", f"pinned from {cfg.coordinator.public_key_file}"))
    except Exception as exc:  # noqa: BLE001
        out.append(Check("coordinator key", "fail", str(exc), "copy the operator's coordinator.key there again"))
    return out


def _disk(cfg: Any) -> Check:
    state = cfg.agent.state_dir
    free = shutil.disk_usage(state if state.exists() else state.parent).free
    seen = f"{free / 2**30:.1f} GiB free under {state}"
    if free < MIN_FREE_BYTES:
        return Check("disk", "fail", seen, "free space there: models, the privacy ledger and the PACS inbox need it")
    if free < LOW_FREE_BYTES:
        return Check("disk", "warn", seen, "free some space before long jobs or PACS bursts")
    return Check("disk", "ok", seen)


def _clock(cfg: Any) -> Check:
    from agent.status import _daemon

    d = _daemon(cfg.agent.state_dir)
    skew = d.get("clock_skew_s") if d else None
    if skew is None:
        return Check("clock", "ok", "not measured (the agent daemon measures it when the coordinator welcomes it)")
    if abs(skew) > MAX_SKEW_S:
        return Check("clock", "warn", f"{skew:+.1f} s against the coordinator",
                     "enable time synchronisation (systemd-timesyncd, chrony)")
    return Check("clock", "ok", f"{skew:+.1f} s against the coordinator")


def _coordinator(cfg: Any, timeout_s: float) -> Check:
    from medfl.wire import ClientChannel, fingerprint, read_keypair, read_public_key

    ep = cfg.coordinator.endpoint
    try:
        keys = read_keypair(cfg.keys.secret_key_file) if cfg.transport.curve else None
        server = read_public_key(cfg.coordinator.public_key_file) if cfg.transport.curve else None
    except Exception as exc:  # noqa: BLE001 - reported by the key checks
        return Check("coordinator", "fail", f"not tried: {exc}", "fix the key files first")
    with ClientChannel(connect=ep, keys=keys, server_public_key=server) as ch:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ch.poll_events()
            if ch.auth_failed:
                fp = fingerprint(keys.public) if keys else "?"
                return Check("coordinator", "fail", f"{ep} refused this agent's key {fp}",
                             f"ask the operator to run 'medfl-coordinator nodes approve {fp}' (read the "
                             "fingerprint to them), or enroll with an invitation")
            if ch.connected:
                return Check("coordinator", "ok", f"{ep} reachable; it admits this agent's key")
            time.sleep(0.05)
    return Check("coordinator", "fail", f"no CurveZMQ handshake with {ep} in {timeout_s:.0f} s",
                 "check the address and the outbound firewall rule to that port, that the coordinator runs, and that "
                 "keys/coordinator.key is the operator's current key")


def _pacs(cfg: Any) -> list[Check]:
    from agent.status import _daemon

    p = cfg.pacs
    out: list[Check] = []
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((p.bind, p.port))
            out.append(Check("pacs port", "ok", f"{p.bind}:{p.port} is free for the DICOM node"))
        except OSError as exc:
            if _daemon(cfg.agent.state_dir) is not None:
                out.append(Check("pacs port", "ok", f"{p.bind}:{p.port} in use (by the running agent, presumably)"))
            else:
                out.append(Check("pacs port", "warn", f"cannot listen on {p.bind}:{p.port}: {exc.strerror}",
                                 "fine if this agent's DICOM node ('medfl-agent pacs serve') runs; otherwise stop "
                                 "what holds the port, or set [pacs] port to a free one"))
    out.append(_echo(p.ae_title, p.destination))
    return out


def _echo(own_aet: str, dest: Any) -> Check:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=own_aet)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    where = f"{dest.ae_title}@{dest.host}:{dest.port}"
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        return Check("pacs destination", "fail", f"no association with {where}",
                     f"check [pacs.destination] and that the PACS knows AE title {own_aet!r} and this host")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    if code != 0:
        return Check("pacs destination", "fail", f"{where} answered C-ECHO with status {code}",
                     "check the PACS' log for why it refused the verification")
    return Check("pacs destination", "ok", f"{where} answers C-ECHO")


def diagnose(config_path: pathlib.Path, *, timeout_s: float = 5.0) -> list[Check]:
    """Run every check for the agent configured at ``config_path``."""
    from agent.config import load_config
    from medfl.errors import MedflError

    try:
        cfg = load_config(config_path)
    except MedflError as exc:
        return [Check("config", "fail", str(exc), "fix agent.toml as each line says, then run doctor again")]
    checks = [Check("config", "ok", f"{config_path} parses")]
    checks += _keys(cfg)
    data = cfg.data.path
    checks.append(Check("data", "ok", f"{data} exists") if data.exists() else
                  Check("data", "fail", f"{data} not found", "set [data] path to the image folder or .npz file"))
    checks += [_disk(cfg), _clock(cfg), _coordinator(cfg, timeout_s)]
    if cfg.pacs.enabled:
        checks += _pacs(cfg)
    return checks


def format_checks(checks: list[Check]) -> list[str]:
    """One line a check, with the fix on the next line for anything not ok, and a verdict."""
    lines = []
    for c in checks:
        lines.append(f"[{c.state:4s}] {c.name}: {c.detail}")
        if c.fix and c.state != "ok":
            lines.append(f"       fix: {c.fix}")
    failed = sum(c.state == "fail" for c in checks)
    warned = sum(c.state == "warn" for c in checks)
    lines.append("all checks passed" if not failed and not warned else f"{failed} failed, {warned} warning(s)")
    return lines

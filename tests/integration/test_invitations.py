"""Enrollment by invitation against a real invite-only daemon, from the hospital's and the attacker's side:
``medfl-agent enroll FILE`` is the whole enrollment; a reused, expired, edited, forged, random or other
coordinator's invitation is refused with a message that says which; the daemon serves throughout."""

from __future__ import annotations

import json
import pathlib
import time

import pytest
import zmq

from medfl.wire import read_public_key
from tests.integration.test_hardening_enrollment import _flood

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _data(fed, name: str, seed: int) -> pathlib.Path:
    from medfl.data.synthetic import hospital_shifts, write_image_folder

    folder = fed.root / name / "data"
    write_image_folder(folder, n_train=48, n_val=32, n_test=0, seed=100 + seed, image_size=32,
                       shift=hospital_shifts(4, seed=3)[seed % 4])
    return folder


def _invite(fed, name: str, expires: str = "72h") -> pathlib.Path:
    out = fed.root / f"{name.replace(' ', '-').lower()}.medfl"
    text = fed.coordinator("nodes", "invite", "--name", name, "--expires", expires, "--endpoint", fed.endpoint,
                           "--out", str(out))
    assert f"wrote {out}" in text and "medfl-agent enroll" in text, text
    return out


def _enroll(fed, invitation: pathlib.Path, folder: str, *, data: pathlib.Path, timeout: float = 20.0):
    return fed.run_cli("agent.cli", "enroll", str(invitation), "--dir", str(fed.root / folder), "--data", str(data),
                       "--timeout", str(timeout), check=False)


def _edited(src: pathlib.Path, dst: pathlib.Path, **changes) -> pathlib.Path:
    doc = json.loads(src.read_text())
    doc.update(changes)
    dst.write_text(json.dumps(doc))
    return dst


def test_enroll_by_invitation_and_every_bad_invitation_refused(federation_factory):
    fed = federation_factory()
    cfg = pathlib.Path(fed.ccfg)
    cfg.write_text(cfg.read_text() + '\n[enrollment]\nmode = "invite-only"\n')
    fed.start_coordinator()
    fed.wait_for("the daemon", lambda: "listening on" in fed.log("coordinator"), timeout=60)
    mary, royal = _invite(fed, "St Mary"), _invite(fed, "Royal Infirmary")
    data = _data(fed, "mary", 0)

    t0 = time.monotonic()
    ok = _enroll(fed, mary, "mary", data=data)
    print(f"enroll took {time.monotonic() - t0:.1f} s")
    assert ok.returncode == 0, ok.stderr
    assert "enrolled as 'St Mary'" in ok.stdout and "fingerprint: SHA256:" in ok.stdout
    assert (fed.root / "mary" / "agent.toml").exists()
    fp = ok.stdout.split("fingerprint: ")[1].split()[0]

    # the lost-reply retry: same folder, same key, no agent.toml yet -> answered again, not refused
    (fed.root / "mary" / "agent.toml").unlink()
    again = _enroll(fed, mary, "mary", data=data)
    assert again.returncode == 0 and fp in again.stdout, again.stderr

    # reuse by another key
    reused = _enroll(fed, mary, "thief", data=data)
    assert reused.returncode != 0 and "already used on" in reused.stderr and fp[:23] in reused.stderr, reused.stderr
    assert not (fed.root / "thief" / "agent.toml").exists()

    # expired
    short = _invite(fed, "Late Clinic", expires="1s")
    time.sleep(1.5)
    late = _enroll(fed, short, "late", data=data)
    assert late.returncode != 0 and "expired on" in late.stderr, late.stderr

    # a flipped byte: in a signed field, in the MAC, in the secret
    doc = json.loads(royal.read_text())
    renamed = _enroll(fed, _edited(royal, fed.root / "e1.medfl", name="Royal Infirmarz"), "e1", data=data)
    assert renamed.returncode != 0 and "edited: name" in renamed.stderr, renamed.stderr
    mac = doc["mac"]
    forged = _enroll(fed, _edited(royal, fed.root / "e2.medfl", mac=mac[:-1] + ("0" if mac[-1] != "0" else "1")),
                     "e2", data=data)
    assert forged.returncode != 0 and "MAC does not verify" in forged.stderr, forged.stderr

    # a key guessed at random (a well-formed invitation with a fresh secret): refused at the handshake
    _, secret = zmq.curve_keypair()
    guessed = _enroll(fed, _edited(royal, fed.root / "e3.medfl", secret=secret.decode()), "e3", data=data)
    assert guessed.returncode != 0 and "refused the invitation's key at the handshake" in guessed.stderr, \
        guessed.stderr

    # another coordinator's invitation: pointed here, or with this coordinator's key put in
    other = federation_factory()
    theirs = fed.root / "other.medfl"
    other.coordinator("nodes", "invite", "--name", "Elsewhere", "--endpoint", other.endpoint, "--out", str(theirs))
    here = _edited(theirs, fed.root / "o1.medfl", endpoint=fed.endpoint)
    lost = _enroll(fed, here, "o1", data=data, timeout=4)
    assert lost.returncode != 0 and "no CURVE handshake" in lost.stderr and "another coordinator" in lost.stderr, \
        lost.stderr
    ours = json.loads(mary.read_text())["coordinator_key"]
    swapped = _enroll(fed, _edited(here, fed.root / "o2.medfl", coordinator_key=ours), "o2", data=data)
    assert swapped.returncode != 0 and "refused the invitation's key at the handshake" in swapped.stderr, \
        swapped.stderr

    # invite-only: a burst of 1,000 handshakes from fresh keys records nothing; the real hospital still enrolls
    _flood(fed.endpoint, read_public_key(fed.coord_dir / "keys" / "coordinator.key"), 1000)
    # the second hospital enrolls with its untouched file; both agents come online and the daemon serves
    ok2 = _enroll(fed, royal, "royal", data=_data(fed, "royal", 1))
    assert ok2.returncode == 0, ok2.stderr
    for name in ("mary", "royal"):
        fed._spawn(name, ["agent.cli", "serve", "--config", str(fed.root / name / "agent.toml")])
    fed.wait_online(2)
    status = fed.coordinator("status")
    assert "St Mary" in status and "Royal Infirmary" in status, status
    nodes = fed.coordinator("nodes", "list")
    assert "pending" not in nodes.split("\n", 1)[1], nodes  # invite-only: no unknown key was recorded
    table = fed.coordinator("nodes", "invitations")
    assert table.count("used ") == 2 and "expired" in table and "open" not in table, table
    log = fed.log("coordinator")
    assert "enrolled by invitation" in log and "Traceback" not in log

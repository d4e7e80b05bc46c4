"""Issue 24, the daemons' part: plan caches shared by `medfl infer` and the coordinator, restarts, SIGTERM, MB counts.

Real daemons on loopback (the fixtures of :mod:`tests.integration.conftest` and the encrypted
inference setup of :mod:`tests.integration.test_encrypted_inference`); assertions read their logs.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import pytest

from tests.integration.conftest import Federation, free_port
from tests.integration.test_encrypted_inference import InferenceSetup, _images, _wait

pytestmark = pytest.mark.integration

#: a behaviour bound, not a benchmark: an idle daemon stops within its poll interval plus the
#: interpreter's exit; 10-13 s (a lingering socket, a long join) is what this catches
STOP_BOUND_S = 4.0


def _sigterm(proc: subprocess.Popen) -> float:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return time.monotonic() - t0


def test_infer_and_the_coordinator_share_one_plan_cache(federation):
    """Item 7: `medfl infer --encrypted` writes the cache, the coordinator's model server reads it."""
    setup = InferenceSetup(federation)
    ckpt = federation.root / "served.safetensors"
    img = _images(federation.root / "imgs", 1, seed=7)[0]
    out = federation.run_cli("apps.cli", "infer", "--checkpoint", str(ckpt), "--encrypted", str(img))
    assert "2pc+dealer" in out.stdout, out.stdout + out.stderr
    cache = ckpt.with_name(ckpt.name + ".smpc-plan.json")
    doc = json.loads(cache.read_text())
    assert doc["format"] == "medfl-smpc-plan/2" and len(doc["plans"]) == 1
    setup.agent("a")
    setup.start()
    log = federation.log("coordinator")
    assert "plan read from cache" in log, log
    assert "ignoring plan cache" not in log and "not usable" not in log and "matrix triple" not in log, log
    assert not re.search(r" WARNING .*plan", log), log
    # the cached plan is the right one: a session runs to the end on it
    proc = setup.infer("a", _images(federation.root / "imgs-a", 1, seed=8))
    assert _wait(proc, 300) == 0, federation.log("a-infer") + federation.log("coordinator")[-3000:]
    assert setup.sessions()[-1]["stage"] == "closed"


def test_coordinator_restart_agent_says_hello_once_without_warnings(federation):
    """Item 8: after a restart the agent re-HELLOs first; one "connected" line per real connection."""
    federation.add_agent("a1", n_train=8, n_val=4, min_parties=1)
    federation.start_coordinator()
    federation.start_agent("a1")
    federation.wait_online(1)
    federation.kill("coordinator", signal.SIGTERM)
    time.sleep(2.5)  # longer than a heartbeat interval: the agent notices while the coordinator is down
    federation.start_coordinator()
    federation.wait_online(1)
    time.sleep(3.0)  # a few heartbeats on the new connection
    coord, agent = federation.log("coordinator"), federation.log("a1")
    for name, log in (("coordinator", coord), ("agent", agent)):
        assert "unknown_peer" not in "\n".join(ln for ln in log.splitlines() if " WARNING " in ln), f"{name}:\n{log}"
    assert len(re.findall(r"agent a1 \(.*\) connected", coord)) == 2, coord
    assert agent.count("connected to coordinator") == 2, agent


def _pacs_agent(fed: Federation, name: str) -> None:
    folder = fed.add_agent(name, n_train=8, n_val=4)
    toml = folder / "agent.toml"
    toml.write_text(toml.read_text() + f"""
[pacs]
enabled = true
bind = "127.0.0.1"
port = {free_port()}
workers = 1
senders = 1
watch_folder = "{folder / 'watch'}"
""")


def test_sigterm_stops_every_daemon_quickly_and_says_so(federation):
    """Item 8: SIGTERM -> "shutting down (SIGTERM)..." at once and an exit within seconds, for each daemon."""
    setup = InferenceSetup(federation)
    _pacs_agent(federation, "a1")
    _pacs_agent(federation, "p1")
    setup.start()  # the dealer and the coordinator hosting a model server
    federation.start_agent("a1")  # an agent with its DICOM node
    federation._spawn("pacs", ["agent.cli", "pacs", "serve", "--config", str(federation.root / "p1" / "agent.toml")])
    keys = federation.coord_dir / "keys"
    federation._spawn("model-server", [
        "coordinator.cli", "model-server", "--checkpoint", str(federation.root / "served.safetensors"),
        "--bind", f"tcp://127.0.0.1:{free_port()}", "--key", str(keys / "coordinator.key_secret"),
        "--allow", str(federation.root / "a1" / "keys" / "agent.key"), "--dealer", setup.dealer_ep,
        "--dealer-key", str(setup.dealer_pub)])
    federation.wait_online(1)
    federation.wait_for("the DICOM nodes and the model server", lambda: (
        "listening on" in federation.log("model-server") and "DICOM node" in federation.log("pacs")
        and "DICOM node" in federation.log("a1")), 240)
    times = {}
    for name in ("model-server", "pacs", "a1", "coordinator", "dealer"):
        times[name] = _sigterm(federation.procs[name])
        log = federation.log(name)
        assert "shutting down (SIGTERM)..." in log, f"{name}:\n{log}"
        assert federation.procs[name].returncode == 0, f"{name} exited {federation.procs[name].returncode}:\n{log}"
    slow = {n: round(t, 1) for n, t in times.items() if t > STOP_BOUND_S}
    assert not slow, f"daemons slower than {STOP_BOUND_S} s to stop after SIGTERM: {slow}"


def test_dealer_and_data_owner_say_what_their_megabytes_count(federation):
    """Item 11: the dealer's MB cover both parties, the data owner's its own half; both say so."""
    setup = InferenceSetup(federation)
    setup.agent("a")
    setup.start()
    proc = setup.infer("a", _images(federation.root / "imgs-a", 1, seed=9))
    assert _wait(proc, 300) == 0, federation.log("a-infer")
    line = next(ln for ln in federation.log("dealer").splitlines() if "sealed" in ln)
    m = re.search(r"([\d.]+) MB sealed for both parties \(party 0, the data owner: ([\d.]+) MB; "
                  r"party 1, the model server: ([\d.]+) MB\)", line)
    assert m, line
    total, p0, p1 = map(float, m.groups())
    assert abs(total - p0 - p1) <= 0.11
    own = setup.result("a")["session"]["bytes_offline"] / 1e6
    assert abs(own - p0) <= 0.051, (own, line)
    printed = federation.log("a-infer")
    assert "MB offline: dealer material received by this data owner (party 0)" in printed, printed
    assert f"{own:.1f} MB for the session" in printed, printed


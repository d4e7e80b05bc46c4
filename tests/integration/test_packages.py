"""The Debian packages end to end, as root (issue 18 items 1 and 2).

Built once per run from this checkout: the PyInstaller bundle, then both .debs (cached by a hash of
the sources). Installed with apt, enrolled by invitation (the agent's postinst with MEDFL_INVITATION,
and a second agent by hand), run exactly as the systemd units would (same user, arguments and no
environment: setpriv + env -i; systemd is not PID 1 here), a 2-round secure job, an upgrade that
keeps keys, ledger and state, remove keeping data, purge removing it. The units are checked with
systemd-analyze verify and scored with systemd-analyze security.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from tests.integration.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("medfl-agent", "medfl-coordinator")
UNIT_ENV: list[str] = []  # the units set no environment


def _need_root_dpkg() -> None:
    if os.geteuid() != 0:
        pytest.skip("the package tests install .debs: run them as root (CI does)")
    for tool in ("dpkg-deb", "apt-get", "setpriv", "runuser", "useradd"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: the package tests need Debian/Ubuntu")


def _source_hash() -> str:
    h = hashlib.sha256()
    for top in ("agent", "coordinator", "medfl", "installer", "setup.py"):
        base = ROOT / top
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file()
                                                     and "__pycache__" not in p.parts)
        for p in files:
            h.update(str(p.relative_to(ROOT)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _run(cmd: list[str], *, check: bool = True, env: dict[str, str] | None = None, timeout: float = 900,
         **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                             f"--- stderr\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def debs() -> dict[str, pathlib.Path]:
    """Both .debs (version 0.1.0 as built and a rebuilt 9.9.9-upgrade of each), built once per sources."""
    _need_root_dpkg()
    cache = ROOT / "build" / "pkg-cache" / _source_hash()
    bundle = cache / "dist" / "medfl"
    if not (bundle / "medfl-agent").is_file():
        shutil.rmtree(cache, ignore_errors=True)
        t = time.monotonic()
        _run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN", "--distpath",
              str(cache / "dist"), "--workpath", str(cache / "work"),
              str(ROOT / "installer" / "bundle" / "medfl.spec")],
             cwd=ROOT, timeout=1800)
        shutil.rmtree(cache / "work", ignore_errors=True)
        size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
        print(f"\nbundle built in {time.monotonic() - t:.0f} s: {size / 2**20:.0f} MiB")
    out = {}
    for version, tag in (("0.1.0", "v1"), ("0.1.1", "v2")):
        d = cache / "deb" / tag
        if not all((d / f"{p}_{version}_amd64.deb").is_file() for p in PACKAGES):
            t = time.monotonic()
            _run([sys.executable, str(ROOT / "installer" / "deb" / "build_deb.py"), "--bundle", str(bundle),
                  "--out", str(d), "--version", version])
            print(f"debs {version} built in {time.monotonic() - t:.0f} s")
        for p in PACKAGES:
            out[f"{p}-{tag}"] = d / f"{p}_{version}_amd64.deb"
    return out


def _purge_all() -> None:
    _run(["apt-get", "purge", "-y", "-q", *PACKAGES], check=False,
         env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def _as_unit(*args: str) -> list[str]:
    """A command as the unit runs it: user medfl, no new privileges, an empty environment."""
    return ["setpriv", "--reuid", "medfl", "--regid", "medfl", "--init-groups", "--no-new-privs", "env", "-i",
            *UNIT_ENV, *args]


def _as_medfl(*args: str) -> list[str]:
    return ["runuser", "-u", "medfl", "--", "env", "-i", *args]


def _apt_install(*debs: pathlib.Path, env: dict[str, str] | None = None) -> float:
    t = time.monotonic()
    _run(["apt-get", "install", "-y", "-q", *[str(d) for d in debs]],
         env={**os.environ, "DEBIAN_FRONTEND": "noninteractive", **(env or {})})
    return time.monotonic() - t


class _Daemons:
    def __init__(self, logdir: pathlib.Path):
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        p = self.logdir / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self, name: str) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def _status() -> dict:
    out = _run(_as_medfl("/usr/bin/medfl-coordinator", "status", "--json", "--config",
                         "/etc/medfl/coordinator/coordinator.toml")).stdout
    return json.loads(out)


def _wait(what: str, pred, daemons: _Daemons, timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(1.0)
    logs = "\n".join(f"--- {n}\n{daemons.log(n)[-3000:]}" for n in ("coordinator", "agent1", "agent2"))
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")


def _digest(*paths: pathlib.Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_install_enroll_job_upgrade_remove_purge(debs, tmp_path):
    _purge_all()
    work = pathlib.Path(tempfile.mkdtemp(prefix="medfl-pkg-", dir="/tmp"))  # readable by the medfl user
    work.chmod(0o755)
    daemons = _Daemons(tmp_path)
    try:
        _scenario(debs, work, daemons)
    finally:
        daemons.stop_all()
        _purge_all()
        shutil.rmtree(work, ignore_errors=True)


def _scenario(debs: dict[str, pathlib.Path], work: pathlib.Path, daemons: _Daemons) -> None:
    from medfl.data.synthetic import hospital_shifts, write_image_folder

    sizes = {k: round(v.stat().st_size / 2**20, 1) for k, v in debs.items() if k.endswith("v1")}
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    figures: dict[str, object] = {"deb_mib": sizes}

    # --- the coordinator package: user, folders, keys and config made by its postinst -----------------------
    figures["install_coordinator_s"] = round(_apt_install(debs["medfl-coordinator-v1"], env={
        "MEDFL_BIND": endpoint, "MEDFL_NAME": "Test Federation"}), 1)
    assert _run(["id", "-u", "medfl"]).stdout.strip().isdigit()
    assert _run(["getent", "passwd", "medfl"]).stdout.strip().endswith(":/usr/sbin/nologin")
    ccfg = pathlib.Path("/etc/medfl/coordinator/coordinator.toml")
    ckeys = pathlib.Path("/etc/medfl/coordinator/keys")
    assert ccfg.is_file() and oct(ckeys.stat().st_mode & 0o777) == "0o700"
    assert oct((ckeys / "coordinator.key_secret").stat().st_mode & 0o777) == "0o600"
    assert oct(pathlib.Path("/var/lib/medfl/coordinator").stat().st_mode & 0o777) == "0o700"
    assert "/var/lib/medfl/coordinator" in ccfg.read_text() and endpoint in ccfg.read_text()
    ccmd = _as_unit("/opt/medfl-coordinator/medfl-coordinator", "serve", "--config", str(ccfg), "--log-format",
                    "json")
    t = time.monotonic()
    daemons.start("coordinator", ccmd)
    _wait("the daemon to listen", lambda: "listening on" in daemons.log("coordinator"), daemons, 120)
    line = [x for x in daemons.log("coordinator").splitlines() if "listening on" in x][0]
    assert {"ts", "level", "msg"} <= set(json.loads(line))  # JSON lines, as the journal gets them
    figures["coordinator_first_start_s"] = round(time.monotonic() - t, 1)

    invitations = work / "invitations"  # the operator's folder (the medfl user writes 0600 files there)
    invitations.mkdir()
    shutil.chown(invitations, "medfl", "medfl")

    def invite(name: str) -> pathlib.Path:
        out = invitations / f"{name.split()[0].lower()}.medfl"
        _run(_as_medfl("/usr/bin/medfl-coordinator", "nodes", "invite", "--name", name, "--endpoint", endpoint,
                       "--out", str(out), "--config", str(ccfg)), cwd=work)
        assert oct(out.stat().st_mode & 0o777) == "0o600"
        return out

    mary, royal = invite("St Mary"), invite("Royal Infirmary")
    data = []
    for i in range(2):
        folder = work / f"data{i}"
        write_image_folder(folder, n_train=48, n_val=32, n_test=0, seed=200 + i, image_size=32,
                           shift=hospital_shifts(4, seed=3)[i])
        data.append(folder)
    for folder in data:
        _run(["chmod", "-R", "a+rX", str(folder)])

    # --- the agent package, enrolled by its postinst ---------------------------------------------------------
    figures["install_agent_enroll_s"] = round(_apt_install(debs["medfl-agent-v1"], env={
        "MEDFL_INVITATION": str(mary), "MEDFL_DATA": str(data[0])}), 1)
    if shutil.which("systemd-analyze"):  # the installed units: syntax, ExecStart executable, user known
        for pkg in PACKAGES:
            verify = _run(["systemd-analyze", "verify", f"/lib/systemd/system/{pkg}.service"], check=False)
            assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    acfg = pathlib.Path("/etc/medfl/agent/agent.toml")
    assert acfg.is_file() and "/var/lib/medfl/agent" in acfg.read_text()
    assert oct((pathlib.Path("/etc/medfl/agent/keys") / "agent.key_secret").stat().st_mode & 0o777) == "0o600"
    assert _run(["stat", "-c", "%U", str(acfg)]).stdout.strip() == "medfl"
    # a second hospital on this machine, enrolled by hand with the installed binary
    second = work / "second"
    second.mkdir()
    shutil.chown(second, "medfl", "medfl")
    enrolled = _run(_as_medfl("/usr/bin/medfl-agent", "enroll", str(royal), "--dir", str(second), "--data",
                              str(data[1]), "--state-dir", str(second / "state")), cwd=work)
    assert "enrolled as 'Royal Infirmary'" in enrolled.stdout
    listing = _run(_as_medfl("/usr/bin/medfl-coordinator", "nodes", "list", "--config", str(ccfg))).stdout
    assert "St Mary" in listing and "Royal Infirmary" in listing, listing

    daemons.start("agent1", _as_unit("/opt/medfl-agent/medfl-agent", "serve", "--config", str(acfg)))
    daemons.start("agent2", _as_unit("/opt/medfl-agent/medfl-agent", "serve", "--config", str(second / "agent.toml")))
    _wait("2 agents online", lambda: len((_status()["daemon"] or {}).get("online") or []) >= 2, daemons, 120)

    job = work / "job.toml"
    job.write_text('[job]\nname = "packaged"\nmodel = "cnn"\nrounds = 2\nmin_agents = 2\nround_deadline_s = 120\n'
                   'image_size = 32\nseed = 1\n[training]\nlocal_epochs = 1\nbatch_size = 16\nlr = 0.05\n'
                   '[aggregation]\nsecure = true\n'
                   '[privacy]\nenabled = true\nnoise_multiplier = 1.0\nmax_grad_norm = 1.0\n')
    job.chmod(0o644)
    job_id = _run(_as_medfl("/usr/bin/medfl-coordinator", "jobs", "submit", str(job), "--config", str(ccfg))
                  ).stdout.strip()
    t = time.monotonic()

    def done():
        jobs = [j for j in _status()["jobs"] if str(j["id"]) == job_id]
        return jobs[0] if jobs and jobs[0]["status"] in ("done", "failed", "cancelled") else None

    finished = _wait(f"job {job_id}", done, daemons, 300)
    figures["job_2_rounds_s"] = round(time.monotonic() - t, 1)
    assert finished["status"] == "done" and finished["rounds_done"] == 2, finished
    assert finished["aggregation"] == "secagg" and len(finished["rounds_table"]) == 2

    # --- upgrade: the rebuilt packages keep config, keys, state and the privacy ledger -----------------------
    ledger = pathlib.Path("/var/lib/medfl/agent/privacy/ledger.sqlite")
    kept = [ccfg, ckeys / "coordinator.key_secret", acfg, pathlib.Path("/etc/medfl/agent/keys/agent.key_secret")]
    daemons.stop_all()
    assert ledger.is_file(), sorted(str(p) for p in pathlib.Path("/var/lib/medfl/agent").rglob("*"))
    before = _digest(*kept, ledger)
    db = sorted(pathlib.Path("/var/lib/medfl/coordinator").rglob("*.sqlite"))
    assert db, "the coordinator's database is missing"
    figures["upgrade_s"] = round(_apt_install(debs["medfl-coordinator-v2"], debs["medfl-agent-v2"]), 1)
    assert _run(["dpkg-query", "-W", "-f", "${Version}", "medfl-agent"]).stdout == "0.1.1"
    assert _digest(*kept, ledger) == before
    daemons.start("coordinator", ccmd)
    _wait("the upgraded daemon", lambda: daemons.log("coordinator").count("listening on") >= 2, daemons, 120)
    after = [j for j in _status()["jobs"] if str(j["id"]) == job_id][0]
    assert after["status"] == "done" and after["rounds_done"] == 2
    daemons.stop_all()

    # --- remove keeps data, purge deletes it (and the user once nothing is left) -----------------------------
    _run(["apt-get", "remove", "-y", "-q", "medfl-agent"], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    assert not pathlib.Path("/opt/medfl-agent").exists() and not pathlib.Path("/usr/bin/medfl-agent").exists()
    assert acfg.is_file() and ledger.is_file() and _digest(ledger) == {str(ledger): before[str(ledger)]}
    _run(["apt-get", "purge", "-y", "-q", *PACKAGES], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    assert not pathlib.Path("/etc/medfl").exists() and not pathlib.Path("/var/lib/medfl").exists()
    assert _run(["getent", "passwd", "medfl"], check=False).returncode != 0
    print("\npackage figures: " + json.dumps(figures))


def test_units_verify_and_score(debs):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not found (Debian's systemd package provides it)")
    with tempfile.TemporaryDirectory() as tmp:
        scores = {}
        for pkg in PACKAGES:
            _run(["dpkg-deb", "-x", str(debs[f"{pkg}-v1"]), tmp])
            unit = pathlib.Path(tmp) / "lib" / "systemd" / "system" / f"{pkg}.service"
            text = unit.read_text()
            for line in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                         "CapabilityBoundingSet=\n", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
                         "SystemCallFilter=@system-service", f"ReadWritePaths=/var/lib/medfl/{pkg.split('-')[1]}\n",
                         "User=medfl"):
                assert line in text, f"{pkg}.service lacks {line!r}"
            sec = _run(["systemd-analyze", "security", "--offline=yes", str(unit)], check=False)
            line = [x for x in sec.stdout.splitlines() if "Overall exposure level" in x]
            assert line, sec.stdout + sec.stderr
            scores[pkg] = float(line[0].split(":")[1].split()[0])
            assert scores[pkg] <= 2.0, sec.stdout  # "OK"; an unhardened service scores 9.6
        print(f"\nsystemd-analyze security exposure: {scores}")


def test_bundle_runs_without_python_environment_or_exec_tmp(debs, tmp_path):
    """The bundled binaries under env -i (no PATH, no PYTHONPATH, no venv) and with TMPDIR on a noexec mount."""
    bundle = next(iter(debs.values())).parents[2] / "dist" / "medfl"
    for exe in ("medfl-agent", "medfl-coordinator"):
        out = _run(["env", "-i", str(bundle / exe), "--help"])
        assert f"usage: {exe}" in out.stdout
    noexec = tmp_path / "noexec"
    noexec.mkdir()
    if _run(["mount", "-t", "tmpfs", "-o", "noexec,nosuid,size=64m", "tmpfs", str(noexec)], check=False).returncode:
        pytest.skip("cannot mount a noexec tmpfs here")
    try:
        (noexec / "probe").write_text("#!/bin/sh\n")
        (noexec / "probe").chmod(0o755)
        with pytest.raises(PermissionError):  # the mount is really noexec
            subprocess.run([str(noexec / "probe")], check=False)
        cdir = tmp_path / "coord"
        made = _run(["env", "-i", f"TMPDIR={noexec}", str(bundle / "medfl-coordinator"), "init", "--dir",
                     str(cdir), "--bind", f"tcp://127.0.0.1:{free_port()}"])
        assert "wrote" in made.stdout and (cdir / "keys" / "coordinator.key").is_file()
        # torch and the native module load from the bundle, not from any Python on the machine
        fp = _run(["env", "-i", f"TMPDIR={noexec}", str(bundle / "medfl-coordinator"), "status", "--config",
                   str(cdir / "coordinator.toml")])
        assert "daemon" in fp.stdout
        assert not list(pathlib.Path(bundle).rglob("*.pkl")) and not list(pathlib.Path(bundle).rglob("*.pickle"))
    finally:
        _run(["umount", str(noexec)], check=False)

"""A real federation on loopback for the integration tests: daemons as separate processes.

The :class:`Federation` fixture owns its temp folder, its processes and their logs, and kills
whatever is left at teardown. It drives the product through its command lines, as an operator
and hospitals would; assertions read the coordinator's SQLite store (the same one ``status``
reads).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Federation:
    """A coordinator and agents, each a real process, talking CurveZMQ on 127.0.0.1."""

    def __init__(self, root: pathlib.Path, *, max_message_mb: int = 256, agent_timeout_s: float = 6.0):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.coord_dir = root / "coordinator"
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, pathlib.Path] = {}
        self.env = dict(os.environ, MEDFL_TORCH_THREADS="1", PYTHONUNBUFFERED="1", MEDFL_LOG_LEVEL="INFO",
                        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.web_port = free_port()
        self.run_cli("coordinator.cli", "init", "--dir", str(self.coord_dir), "--bind", self.endpoint,
                     "--web-bind", f"127.0.0.1:{self.web_port}")
        cfg = self.coord_dir / "coordinator.toml"
        text = cfg.read_text()
        text = text.replace("max_message_mb = 256", f"max_message_mb = {max_message_mb}")
        text = text.replace("agent_timeout_s = 20.0", f"agent_timeout_s = {agent_timeout_s}")
        text = text.replace("eval_deadline_s = 120.0", "eval_deadline_s = 60.0")
        cfg.write_text(text)
        self.ccfg = str(cfg)

    # ---- command lines -----------------------------------------------------------------
    def run_cli(self, module: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                              env=self.env, cwd=self.root, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"{module} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc

    def coordinator(self, *args: str, check: bool = True) -> str:
        return self.run_cli("coordinator.cli", *args, "--config", self.ccfg, check=check).stdout

    def add_agent(self, name: str, *, n_train: int = 48, n_val: int = 32, seed: int = 0, approve: bool = True,
                  min_parties: int = 2) -> pathlib.Path:
        from medfl.data.synthetic import hospital_shifts, write_image_folder

        folder = self.root / name
        shift = hospital_shifts(4, seed=3)[seed % 4]
        write_image_folder(folder / "data", n_train=n_train, n_val=n_val, n_test=0, seed=100 + seed,
                           image_size=32, shift=shift)
        self.run_cli("agent.cli", "init", "--dir", str(folder), "--name", name, "--coordinator", self.endpoint,
                     "--coordinator-key", str(self.coord_dir / "keys" / "coordinator.key"),
                     "--data", str(folder / "data"), "--min-parties", str(min_parties))
        if approve:
            self.coordinator("nodes", "approve", str(folder / "keys" / "agent.key"))
        return folder

    # ---- processes ---------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        fh = open(log, "a")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen([sys.executable, "-m", *args], stdout=fh, stderr=subprocess.STDOUT,
                                env=self.env, cwd=self.root)
        fh.close()
        self.procs[name] = proc
        self.logs[name] = log
        return proc

    def start_coordinator(self) -> subprocess.Popen:
        return self._spawn("coordinator", ["coordinator.cli", "serve", "--config", self.ccfg])

    def start_agent(self, name: str) -> subprocess.Popen:
        return self._spawn(name, ["agent.cli", "serve", "--config", str(self.root / name / "agent.toml")])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            proc.wait(timeout=30)

    def log(self, name: str) -> str:
        return self.logs[name].read_text() if name in self.logs else ""

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # ---- job helpers -------------------------------------------------------------------
    def submit(self, *, rounds: int = 2, min_agents: int = 3, deadline_s: float = 60.0, retries: int = 3,
               extra: str = "") -> str:
        job = self.root / f"job-{time.monotonic_ns()}.toml"
        job.write_text(f"""
[job]
name = "it"
model = "cnn"
rounds = {rounds}
min_agents = {min_agents}
round_deadline_s = {deadline_s}
max_round_retries = {retries}
image_size = 32
seed = 1
{extra}
[training]
local_epochs = 1
batch_size = 16
lr = 0.05
""")
        return self.coordinator("jobs", "submit", str(job)).strip()

    def store(self):
        from coordinator.store import Store

        return Store(self.coord_dir / "state" / "coordinator.sqlite")

    def rounds(self, job_id: str) -> list[Any]:
        """The job's completed rounds, as the store holds them."""
        store = self.store()
        try:
            return store.rounds(job_id)
        finally:
            store.close()

    def status(self) -> dict[str, Any]:
        return json.loads(self.coordinator("status", "--json"))

    def wait_for(self, what: str, pred: Callable[[], Any], timeout: float = 120.0, every: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if name == "coordinator" and proc.poll() is not None and proc.returncode != -signal.SIGKILL:
                    raise AssertionError(f"coordinator exited {proc.returncode}:\n{self.log('coordinator')[-3000:]}")
            value = pred()
            if value:
                return value
            time.sleep(every)
        logs = "\n".join(f"--- {n}\n{self.log(n)[-2500:]}" for n in self.logs)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")

    def wait_online(self, n: int, timeout: float = 60.0) -> None:
        store = self.store()
        try:
            def online():
                daemon = json.loads(store.get_meta("daemon") or "null")
                return daemon is not None and len(daemon.get("online") or []) >= n
            self.wait_for(f"{n} agents online", online, timeout)
        finally:
            store.close()

    def wait_job(self, job_id: str, timeout: float = 180.0) -> Any:
        store = self.store()
        try:
            def finished():
                job = store.job(job_id)
                return job if job.status in ("done", "failed", "cancelled") else None
            return self.wait_for(f"job {job_id} to finish", finished, timeout)
        finally:
            store.close()


@pytest.fixture
def federation(tmp_path):
    fed = Federation(tmp_path)
    yield fed
    fed.close()


@pytest.fixture
def federation_factory(tmp_path):
    made: list[Federation] = []

    def make(**kw: Any) -> Federation:
        fed = Federation(tmp_path / f"fed{len(made)}", **kw)
        made.append(fed)
        return fed

    yield make
    for fed in made:
        fed.close()

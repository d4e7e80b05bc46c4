"""The README's first hour, run as written: its operator and hospital code blocks against real daemons.

The commands come from the code blocks of the README sections in :data:`SECTIONS`, in document
order; nothing here restates them. What the test adds is explicit and small:

- :func:`placeholders`: each example value of the README (``/srv/medfl``, ``/opt/medfl-agent``,
  ``tcp://fl.example.org:7777`` ...) -> a temp path or a loopback endpoint with a free port;
- :data:`HANDOFFS`: the files one party hands to the other (``coordinator.key``, ``agent.key``),
  copied from where the README says they are into the receiving party's current folder;
- two hospitals: a secure job needs two, so every line naming a hospital's value (or run by
  ``medfl-agent``) runs once per hospital, with that hospital's values;
- the README's shell conventions: ``\\`` continues a line, ``# ...`` is a comment, a trailing
  ``&`` starts a daemon in the background, a comment "again until the job says done" repeats
  the command until its output says so; a ``toml`` block whose first line is ``# NAME.toml``
  is that file, written into the operator's folder.

Programs map to this tree's code: ``medfl-agent`` -> ``python -m agent.cli``,
``medfl-coordinator`` -> ``python -m coordinator.cli``, ``medfl`` -> ``python -m apps.cli``; any
other program, a non-zero exit, a daemon that exits, or a placeholder of the table the README
no longer uses fails the test.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import REPO, free_port

pytestmark = pytest.mark.integration

README = REPO / "README.md"
SECTIONS = ("Run a coordinator (operator)", "Install an agent (hospital IT)", "A first job (operator, then hospitals)")
PROGRAMS = {"medfl-agent": "agent.cli", "medfl-coordinator": "coordinator.cli", "medfl": "apps.cli"}
#: values that belong to one hospital: a line naming one runs once per hospital
HOSPITAL_VALUES = ("/opt/medfl-agent", "/data/chest_xray", "st-mary", "agent.key")
#: file handed over -> (receiving party, where the README says the sender has it)
HANDOFFS = {"coordinator.key": ("hospital", "/srv/medfl/keys/coordinator.key"),
            "agent.key": ("operator", "/opt/medfl-agent/keys/agent.key")}
REPEAT_MARK = "again until the job says done"


@dataclasses.dataclass
class Block:
    section: str
    lang: str
    text: str


@dataclasses.dataclass
class Party:
    name: str
    cwd: pathlib.Path
    values: dict[str, str]


def readme_blocks(text: str) -> list[Block]:
    """Every fenced code block of the README with its ``## `` section, in document order (indented ones dedented)."""
    blocks: list[Block] = []
    section, fence, indent = "", None, 0
    for line in text.splitlines():
        stripped = line.lstrip()
        if fence is None and line.startswith("## "):
            section = line[3:].strip()
        elif fence is None and stripped.startswith("```"):
            fence, indent = Block(section, stripped[3:].strip(), ""), len(line) - len(stripped)
        elif fence is not None and stripped.startswith("```"):
            blocks.append(fence)
            fence = None
        elif fence is not None:
            fence.text += line[indent:] + "\n"
    assert fence is None, "README ends inside a code block"
    return blocks


def first_hour_blocks(text: str) -> list[Block]:
    """The code blocks of :data:`SECTIONS`, in document order."""
    blocks = [b for b in readme_blocks(text) if b.section in SECTIONS]
    found = {b.section for b in blocks}
    assert found == set(SECTIONS), f"README sections with code blocks: {sorted(found)}; expected {SECTIONS}"
    return blocks


def shell_lines(text: str) -> list[str]:
    """Join ``\\`` continuations; drop blank lines (comments stay: shlex strips them later)."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        pending = ""
        if line and not line.startswith("#"):
            out.append(line)
    assert not pending, f"README block ends with a continuation: {pending!r}"
    return out


def placeholders(tmp: pathlib.Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The README's example values -> this run's: the operator's table and one per hospital."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    operator = {"/srv/medfl": str(tmp / "srv-medfl"), "tcp://0.0.0.0:7777": endpoint}
    hospitals = [{"/opt/medfl-agent": str(tmp / f"opt-{name}"), "/data/chest_xray": str(tmp / f"data-{name}"),
                  "st-mary": name, "tcp://fl.example.org:7777": endpoint} for name in ("st-mary", "st-john")]
    return operator, hospitals


def substitute(line: str, values: dict[str, str]) -> str:
    for key in sorted(values, key=len, reverse=True):
        line = line.replace(key, values[key])
    return line


class Runner:
    """Runs README lines as a user would: each party in its own folder, daemons in the background."""

    def __init__(self, tmp: pathlib.Path):
        self.tmp = tmp
        self.env = dict(os.environ, MEDFL_TORCH_THREADS="1", PYTHONUNBUFFERED="1",
                        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.daemons: list[tuple[str, subprocess.Popen, pathlib.Path]] = []
        self.transcript: list[str] = []
        self.t0 = time.monotonic()

    def argv(self, line: str) -> tuple[list[str], bool]:
        words = shlex.split(line, comments=True)
        background = bool(words) and words[-1] == "&"
        if background:
            words = words[:-1]
        assert words and words[0] in PROGRAMS, f"README runs {words[:1]}, not one of {sorted(PROGRAMS)}: {line!r}"
        return [sys.executable, "-m", PROGRAMS[words[0]], *words[1:]], background

    def handoff(self, line: str, party: Party, sender: dict[str, str]) -> None:
        for name, (receiver, source) in HANDOFFS.items():
            if receiver == party.name and re.search(rf"(?<![\w/.-]){re.escape(name)}\b", line):
                src = pathlib.Path(substitute(source, sender))
                assert src.is_file(), f"README says {name} is at {source}, but {src} does not exist"
                shutil.copyfile(src, party.cwd / name)

    def run(self, line: str, party: Party) -> str:
        argv, background = self.argv(substitute(line, party.values))
        self.transcript.append(f"[+{time.monotonic() - self.t0:.1f} s, {party.name} in {party.cwd.name}] {line}")
        if background:
            log = self.tmp / "logs" / f"{len(self.daemons)}-{argv[2]}.log"
            log.parent.mkdir(exist_ok=True)
            with open(log, "w") as fh:
                proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=self.env, cwd=party.cwd)
            self.daemons.append((line, proc, log))
            return ""
        if REPEAT_MARK in line:
            return self.repeat(argv, party, line)
        out = self.call(argv, party, line)
        self.transcript.append(out)
        return out

    def call(self, argv: list[str], party: Party, line: str) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env, cwd=party.cwd, timeout=120)
        if proc.returncode != 0:
            raise AssertionError(f"README line {line!r} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}\n"
                                 + self.report())
        return proc.stdout

    def repeat(self, argv: list[str], party: Party, line: str, timeout: float = 100.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_daemons()
            out = self.call(argv, party, line)
            if re.search(r"^job \S+ .*: failed", out, re.M):
                raise AssertionError(f"the job failed:\n{out}\n" + self.report())
            if re.search(r"^job \S+ .*: done ", out, re.M):
                self.transcript.append(out)
                return out
            time.sleep(1.0)
        raise AssertionError(f"{line!r} did not say done within {timeout} s\n" + self.report())

    def check_daemons(self) -> None:
        for line, proc, _ in self.daemons:
            if proc.poll() is not None:
                raise AssertionError(f"daemon {line!r} exited {proc.returncode}\n" + self.report())

    def report(self) -> str:
        logs = "".join(f"--- {line}\n{log.read_text()[-2500:]}\n" for line, _, log in self.daemons)
        return "--- transcript\n" + "\n".join(self.transcript)[-4000:] + "\n" + logs

    def stop(self) -> None:
        for _, proc, _ in self.daemons:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc, _ in self.daemons:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.slow
def test_readme_first_hour_runs_as_written(tmp_path):
    from medfl.data.synthetic import write_image_folder

    text = README.read_text()
    blocks = first_hour_blocks(text)
    op_values, hosp_values = placeholders(tmp_path)
    for key in [*op_values, *hosp_values[0], *HANDOFFS]:
        assert key in text, f"placeholder {key!r} of this test is not in the README any more: update the table"
    operator = Party("operator", tmp_path / "operator-home", op_values)
    hospitals = [Party("hospital", tmp_path / f"hospital-home-{v['st-mary']}", v) for v in hosp_values]
    for i, h in enumerate(hospitals):  # each hospital's existing data set, at the README's data path
        write_image_folder(h.values["/data/chest_xray"], n_train=24, n_val=12, n_test=0, seed=7 + i, image_size=32)
    for party in (operator, *hospitals):
        party.cwd.mkdir()

    runner = Runner(tmp_path)
    outputs: dict[str, list[str]] = {}
    try:
        for block in blocks:
            if block.lang == "toml":
                name = re.match(r"# (\S+\.toml)\b", block.text)
                assert name, f"a toml block of README section {block.section!r} does not start with '# FILE.toml'"
                (operator.cwd / name.group(1)).write_text(block.text)
                continue
            assert block.lang in ("", "sh", "bash", "console"), f"README block in {block.section!r}: {block.lang!r}"
            for line in shell_lines(block.text):
                if line.startswith("medfl-agent"):
                    runs = list(enumerate(hospitals))
                elif any(v in line for v in HOSPITAL_VALUES):  # the operator, once per hospital
                    runs = [(i, Party("operator", operator.cwd, {**op_values, **v})) for i, v in enumerate(hosp_values)]
                else:
                    runs = [(0, operator)]
                for i, party in runs:
                    runner.handoff(line, party, {**op_values, **hosp_values[i]})
                    outputs.setdefault(line.split("#")[0].strip(), []).append(runner.run(line, party))
        runner.check_daemons()
    finally:
        runner.stop()
    runner.transcript.append(f"[+{time.monotonic() - runner.t0:.1f} s] daemons stopped")
    print(runner.report())  # shown with pytest -rP: what the README ran and what it printed

    def out(prefix: str) -> str:
        return "".join(o for line, outs in outputs.items() if line.startswith(prefix) for o in outs)

    assert out("medfl-agent check").count("configuration OK") == 2, runner.report()
    assert "approved" in out("medfl-coordinator nodes approve"), runner.report()
    assert re.search(r"done\s+first-try\s+rounds 2/2", out("medfl-coordinator jobs list")), runner.report()
    nodes = out("medfl-coordinator nodes list")
    assert all(h in nodes for h in ("st-mary", "st-john")) and "pending" not in nodes, runner.report()
    # the modes the README gives the key files and their folder are the ones init writes
    for folder, stem in ((op_values["/srv/medfl"], "coordinator"), (hosp_values[0]["/opt/medfl-agent"], "agent")):
        keys = pathlib.Path(folder) / "keys"
        files = (keys, keys / f"{stem}.key", keys / f"{stem}.key_secret")
        modes = {p.name: oct(p.stat().st_mode & 0o777) for p in files}
        assert modes == {"keys": "0o700", f"{stem}.key": "0o644", f"{stem}.key_secret": "0o600"}, modes
        assert f"`{stem}.key`, the public key (mode 0644" in text and "mode 0600" in text and "mode 0700" in text


def _merge(base: dict, fragment: dict) -> dict:
    """``fragment``'s tables over ``base``'s, key by key (a README fragment adds to what init wrote)."""
    out = dict(base)
    for key, value in fragment.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def test_readme_configuration_examples_are_accepted(tmp_path):
    """Every README toml block headed ``# agent.toml``, ``# coordinator.toml`` or ``# job.toml`` passes the real checks.

    Fragments of agent.toml and coordinator.toml go over the files ``init`` writes; then ``medfl-agent check``
    and ``medfl-coordinator nodes list`` load them (every key checked by its TOML path), and every job file
    goes through ``medfl-coordinator jobs submit``.
    """
    import tomllib

    import tomli_w

    from medfl.data.synthetic import write_image_folder

    examples: dict[str, list[Block]] = {"agent.toml": [], "coordinator.toml": [], "job.toml": []}
    for block in readme_blocks(README.read_text()):
        head = re.match(r"# (\S+\.toml)\b", block.text)
        if block.lang == "toml" and head:
            assert head.group(1) in examples, f"README toml block for unknown file {head.group(1)!r}"
            examples[head.group(1)].append(block)
    assert all(examples.values()), {k: len(v) for k, v in examples.items()}

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def cli(module: str, *args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=120)
        assert proc.returncode == 0, f"{module} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
        return proc.stdout

    write_image_folder(tmp_path / "data", n_train=8, n_val=0, n_test=0, seed=1, image_size=32)
    cli("coordinator.cli", "init", "--dir", "srv")
    cli("agent.cli", "init", "--dir", "agent", "--name", "st-mary", "--coordinator", "tcp://127.0.0.1:7777",
        "--coordinator-key", "srv/keys/coordinator.key", "--data", "data")
    # the dealer's public key where the README's [inference] examples put it, in both folders
    from medfl.wire import generate_keypair, write_keypair

    dealer_pub, _ = write_keypair(tmp_path / "dealer", "dealer", generate_keypair())
    for folder in ("agent", "srv"):
        shutil.copyfile(dealer_pub, tmp_path / folder / "keys" / "dealer.key")
    for name, folder, check in (("agent.toml", "agent", ("agent.cli", "check")),
                                ("coordinator.toml", "srv", ("coordinator.cli", "nodes", "list"))):
        path = tmp_path / folder / name
        doc = tomllib.loads(path.read_text())
        for block in examples[name]:  # distinct tables: all of them at once, one check
            doc = _merge(doc, tomllib.loads(block.text))
        path.write_text(tomli_w.dumps(doc))
        cli(*check, "--config", str(path))
    for i, block in enumerate(examples["job.toml"]):
        (tmp_path / f"job-{i}.toml").write_text(block.text)
        assert cli("coordinator.cli", "jobs", "submit", f"job-{i}.toml", "--config", "srv/coordinator.toml").strip()

"""Where the 10-agent round's CPU goes, by kernel sampling: plain vs secure side by side.

    sudo python benchmarks/round_profile.py [--agents 10] [--rounds 4] [--neighbours 4] [--freq 499]
                                            [--json benchmarks/results/round_profile.json]

Runs one job of :mod:`benchmarks.secagg_round` per mode (plain FedAvg, then secure aggregation),
each in a fresh process under ``perf record -a -g`` (Linux ``perf``; root, or
``kernel.perf_event_paranoid`` <= -1 for system-wide sampling), and prints:

- CPU seconds per round from the samples (all processes, idle excluded), and the seconds of them
  spent in the kernel zeroing fresh pages (``clear_page_*``: the first touch of newly mapped
  memory), each side by side with the plain round;
- the user-space code whose first touch of fresh memory caused that zeroing (the first
  non-kernel frame of each sample's call chain): a NumPy loop writing a new array, a native
  kernel writing its output, ``memmove`` copying received frames;
- for scale, what one fresh ring-vector-sized array costs to fault in and fill in an idle process.

Each sample is 1 / ``--freq`` CPU seconds. The first round (warm-up of every process) is included
in both modes alike.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
IDLE = ("pv_native_safe_halt", "default_idle", "intel_idle", "acpi_idle", "poll_idle", "cpu_idle_poll",
        "native_safe_halt", "mwait_idle")


def _child(mode: str, agents: int, rounds: int, neighbours: int) -> None:
    """Run one mode of the round benchmark (the process ``perf`` samples)."""
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("MEDFL_TORCH_THREADS", "1")
    from benchmarks import secagg_round

    r = secagg_round.run_mode(secure=mode == "secure", agents=agents, rounds=rounds, model="resnet18",
                              neighbours=neighbours if mode == "secure" else 0)
    print(json.dumps({"round_s_all": r["round_s_all"], "cpu_s_all": r["cpu_s_all"]}))


def _samples(data: pathlib.Path) -> list[tuple[str, list[str]]]:
    """(command, frames leaf first) of every sample in a ``perf record -g`` file."""
    text = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,ip,sym,dso"], check=True,
                          capture_output=True, text=True).stdout
    out = []
    for block in text.split("\n\n"):
        lines = [ln.strip() for ln in block.strip().splitlines() if ln.strip()]
        if len(lines) >= 2:
            out.append((lines[0].split()[0], lines[1:]))
    return out


def _frame_name(frame: str) -> str:
    """``symbol (library)`` of one ``perf script`` frame line (``ip symbol (dso)``)."""
    parts = frame.split(None, 1)
    rest = parts[1] if len(parts) > 1 else frame
    sym, _, dso = rest.partition(" (")
    lib = pathlib.Path(dso.rstrip(")")).name
    lib = "medfl native" if lib.startswith("_native.") else lib.split(".cpython")[0]
    return f"{'(unresolved)' if sym.startswith('[unknown]') else sym} ({lib})"


def analyse(data: pathlib.Path, *, freq: int, rounds: int) -> dict[str, Any]:
    """CPU and page-zeroing seconds per round, and who first touched the zeroed pages."""
    busy = zeroing = 0
    by_caller: collections.Counter[str] = collections.Counter()
    for comm, frames in _samples(data):
        if comm == "swapper" or any(idle in frames[0] for idle in IDLE):
            continue
        busy += 1
        if "clear_page" not in frames[0]:
            continue
        zeroing += 1
        user = next((f for f in frames[1:] if "[kernel" not in f), None)
        by_caller[f"{comm}: {_frame_name(user)}" if user else f"{comm}: (kernel only)"] += 1
    per_round = 1.0 / freq / rounds
    return {"cpu_s_per_round": busy * per_round, "zeroing_s_per_round": zeroing * per_round,
            "zeroing_by_caller_s_per_round": {k: v * per_round for k, v in by_caller.most_common()}}


def fresh_array_ms(n: int, *, repeats: int = 10) -> float:
    """Median CPU milliseconds to allocate and fill a fresh float32 array of ``n`` elements, alone.

    Each array is freed before the next is made, in this otherwise idle process: the cost of a
    fresh ring vector outside the round, to set against the zeroing seconds measured inside it.
    """
    times = []
    for _ in range(repeats):
        t = time.process_time()
        np.empty(n, dtype=np.float32).fill(1.0)
        times.append(time.process_time() - t)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Profile both modes and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--neighbours", type=int, default=4, help="SecAgg+ neighbourhood (0: complete graph)")
    ap.add_argument("--freq", type=int, default=499, help="samples per second per CPU")
    ap.add_argument("--json", type=pathlib.Path, default=REPO / "benchmarks" / "results" / "round_profile.json")
    ap.add_argument("--child", choices=("plain", "secure"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.agents, args.rounds, args.neighbours)
        return {}
    if shutil.which("perf") is None:
        raise SystemExit("round_profile: needs Linux `perf` (Debian/Ubuntu: apt-get install linux-perf)")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="round-profile-") as tmp:
        for mode in ("plain", "secure"):
            data = pathlib.Path(tmp) / f"{mode}.data"
            cmd = ["perf", "record", "-q", "-F", str(args.freq), "-a", "-g", "-o", str(data), "--",
                   sys.executable, str(pathlib.Path(__file__).resolve()), "--child", mode, "--agents",
                   str(args.agents), "--rounds", str(args.rounds), "--neighbours", str(args.neighbours)]
            print(f"profiling the {mode} round ({args.rounds} rounds) ...", flush=True)
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                raise SystemExit(f"round_profile: `perf record` failed ({run.returncode}); system-wide sampling "
                                 f"needs root or kernel.perf_event_paranoid <= -1\n{run.stderr[-2000:]}")
            timings = json.loads(run.stdout.strip().splitlines()[-1])
            results[mode] = {**analyse(data, freq=args.freq, rounds=args.rounds), **timings}
    plain, secure = results["plain"], results["secure"]
    label = "secure" if args.neighbours == 0 else f"secagg+ k={args.neighbours}"
    print(f"\n{args.agents} agents, ResNet-18, {args.rounds} rounds, {os.cpu_count()} cores; CPU s per round from "
          f"perf samples ({args.freq} Hz, idle excluded)")
    print(f"{'':<34} {'plain':>8} {label:>14} {'extra':>8}")
    for key, text in (("cpu_s_per_round", "CPU s per round"), ("zeroing_s_per_round", "  of it zeroing fresh pages")):
        print(f"{text:<34} {plain[key]:>8.2f} {secure[key]:>14.2f} {secure[key] - plain[key]:>+8.2f}")
    print("zeroing fresh pages, by the code that first touched them (CPU s per round):")
    callers = sorted(set(plain["zeroing_by_caller_s_per_round"]) | set(secure["zeroing_by_caller_s_per_round"]),
                     key=lambda c: -secure["zeroing_by_caller_s_per_round"].get(c, 0.0)
                     - plain["zeroing_by_caller_s_per_round"].get(c, 0.0))
    for c in callers[:12]:
        a = plain["zeroing_by_caller_s_per_round"].get(c, 0.0)
        b = secure["zeroing_by_caller_s_per_round"].get(c, 0.0)
        print(f"  {c[:70]:<70} {a:>6.2f} {b:>6.2f}")
    n = 11_171_266  # ResNet-18's float parameters: one ring vector of the round
    fresh = fresh_array_ms(n)
    print(f"for scale: a fresh {n * 4 / 1e6:.1f} MB array (one ring vector), allocated and filled in an idle "
          f"process: {fresh:.1f} ms CPU")
    result = {"agents": args.agents, "rounds": args.rounds, "neighbours": args.neighbours, "freq": args.freq,
              "cores": os.cpu_count(), "plain": plain, "secure": secure, "fresh_ring_vector_alone_ms": fresh,
              "command": " ".join(["python", "benchmarks/round_profile.py", *(argv if argv is not None
                                                                              else sys.argv[1:])])}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()

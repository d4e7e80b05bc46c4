"""Run every fuzz target concurrently under atheris and print executions and crashes per target.

``python benchmarks/fuzz/run.py [--seconds N] [--targets a,b] [--out DIR] [--json FILE]``

Seconds per target default to ``MEDFL_FUZZ_SECONDS`` (60). Each target starts from the seed
corpus of :mod:`benchmarks.fuzz.seeds` (real valid messages) plus whatever an earlier run with
the same ``--out`` added; crashing inputs land in ``OUT/crashes/<target>/``. The exit status is 1
when any target crashed (or did not run), so ``make fuzz`` and the CI test fail on a finding.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.fuzz.targets import TARGETS  # noqa: E402

_DONE = re.compile(r"Done (\d+) runs in (\d+) second")


def _result(name: str, proc: subprocess.Popen, log: pathlib.Path, stats: pathlib.Path,
            crashes: pathlib.Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(stats.read_text()) if stats.exists() else {"executions": 0, "crashes": 0,
                                                                                "sites": {}}
    text = log.read_text(errors="replace")
    done = _DONE.search(text)
    if done:  # libFuzzer's own count and time (the stats file may be half a second behind)
        doc["executions"], doc["seconds"] = int(done.group(1)), int(done.group(2))
    artifacts = sorted(p.name for p in crashes.glob("*") if p.name.startswith(("crash-", "timeout-", "oom-",
                                                                                 "slow-unit-")))
    doc.update(target=name, returncode=proc.returncode, artifacts=artifacts,
               corpus=len(list((stats.parent / "corpus" / name).iterdir())))
    if proc.returncode != 0 or artifacts:  # a hang, an OOM or a native crash ended the worker
        doc["crashes"] = int(doc.get("crashes", 0)) + max(1, len(artifacts))
        doc["tail"] = text[-2000:]
    return doc


def run(names: list[str], seconds: int, out: pathlib.Path) -> list[dict[str, Any]]:
    """Fuzz ``names`` for ``seconds`` each, all at once; one result dict per target."""
    from benchmarks.fuzz.seeds import write

    out.mkdir(parents=True, exist_ok=True)
    write(out / "corpus")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = {}
    for name in names:
        crashes = out / "crashes" / name
        crashes.mkdir(parents=True, exist_ok=True)
        log = out / f"{name}.log"
        cmd = [sys.executable, "-m", "benchmarks.fuzz.worker", name, "--seconds", str(seconds),
               "--corpus", str(out / "corpus" / name), "--crashes", str(crashes), "--stats", str(out / f"{name}.json")]
        with open(log, "w") as fh:
            procs[name] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT), log, crashes)
    results = []
    for name, (proc, log, crashes) in procs.items():
        try:
            proc.wait(timeout=seconds + 300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        results.append(_result(name, proc, log, out / f"{name}.json", crashes))
    return results


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the targets, print the table; 1 if anything crashed."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("MEDFL_FUZZ_SECONDS", "60")))
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated; default all: {','.join(TARGETS)}")
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("fuzz-out"))
    ap.add_argument("--json", type=pathlib.Path, help="also write the results here")
    args = ap.parse_args(argv)
    names = [n for n in args.targets.split(",") if n]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; targets: {', '.join(TARGETS)}")
    t0 = time.monotonic()
    results = run(names, args.seconds, args.out)
    wall = time.monotonic() - t0
    print(f"{'target':<12} {'seconds':>7} {'executions':>11} {'exec/s':>8} {'corpus':>6} {'crashes':>7}  covers")
    for r in results:
        secs = max(float(r.get("seconds", 0)), 1e-9)
        print(f"{r['target']:<12} {r.get('seconds', 0):>7} {r['executions']:>11} {r['executions'] / secs:>8.0f} "
              f"{r['corpus']:>6} {r['crashes']:>7}  {TARGETS[r['target']].covers}")
        for site, file in r.get("sites", {}).items():
            print(f"    crash: {site} (input {args.out}/crashes/{r['target']}/{file})")
        for a in r.get("artifacts", []):
            print(f"    libFuzzer artifact: {args.out}/crashes/{r['target']}/{a}")
    print(f"{len(results)} targets, {args.seconds} s each, {wall:.0f} s wall, "
          f"{sum(r['crashes'] for r in results)} crashes")
    if args.json:
        args.json.write_text(json.dumps({"seconds": args.seconds, "wall_s": round(wall, 1), "targets": results},
                                        indent=2) + "\n")
    return 1 if any(r["crashes"] or not r["executions"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

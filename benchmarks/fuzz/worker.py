"""Run one fuzz target under atheris (coverage-guided, libFuzzer) for a fixed time.

``python -m benchmarks.fuzz.worker TARGET --seconds N --corpus DIR --crashes DIR --stats FILE``

Every input goes to the target inside a ``try``: an exception other than the target's typed
error is a crash; its input is written to ``CRASHES/<sha1>`` (with the traceback beside it in
``<sha1>.txt``) and fuzzing goes on, so one run counts every distinct crash. A hang past
``-timeout`` or memory past ``-rss_limit_mb`` ends the run the libFuzzer way (an artifact under
CRASHES and a non-zero exit), which the runner reports as a crash too. The worker writes its
counts to STATS (JSON) at least every half second: executions, crashes, distinct crash sites.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import sys
import time
import traceback
from typing import Any


def _site(exc: BaseException) -> str:
    """Where a crash happened: exception type and the innermost frame inside medfl/agent/coordinator."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if any(p in f.filename for p in ("/medfl/", "/agent/", "/coordinator/"))]
    f = (ours or frames or [None])[-1]
    where = "/".join(f.filename.rsplit("/", 2)[-2:]) if f else "?"
    return f"{type(exc).__name__} at {where}:{f.lineno if f else 0}"


class _Counter:
    def __init__(self, name: str, crashes: pathlib.Path, stats: pathlib.Path):
        self.name, self.crashes, self.stats = name, crashes, stats
        self.execs = 0
        self.crash_count = 0
        self.sites: dict[str, str] = {}
        self.t0 = time.monotonic()
        self.last_write = 0.0

    def crash(self, data: bytes, exc: BaseException) -> None:
        self.crash_count += 1
        site = _site(exc)
        if site not in self.sites:
            digest = hashlib.sha1(data).hexdigest()
            path = self.crashes / digest
            path.write_bytes(data)
            path.with_suffix(".txt").write_text(site + "\n" + "".join(traceback.format_exception(exc)))
            self.sites[site] = path.name
            print(f"fuzz {self.name}: crash {site} -> {path}", file=sys.stderr, flush=True)
        self.write()

    def tick(self) -> None:
        self.execs += 1
        if self.execs % 64 == 0 and time.monotonic() - self.last_write > 0.5:
            self.write()

    def write(self) -> None:
        self.last_write = time.monotonic()
        doc: dict[str, Any] = {"target": self.name, "executions": self.execs, "crashes": self.crash_count,
                               "sites": self.sites, "seconds": round(self.last_write - self.t0, 1)}
        tmp = self.stats.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.stats)


def main(argv: list[str] | None = None) -> None:
    """Fuzz one target until ``--seconds`` have passed (libFuzzer's -max_total_time)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("target")
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--corpus", type=pathlib.Path, required=True, help="seed folder; new inputs are added to it")
    ap.add_argument("--crashes", type=pathlib.Path, required=True)
    ap.add_argument("--stats", type=pathlib.Path, required=True)
    ap.add_argument("--timeout", type=int, default=20, help="seconds one input may take before it is a hang")
    ap.add_argument("--rss-limit-mb", type=int, default=3072)
    args = ap.parse_args(argv)

    import atheris

    from benchmarks.fuzz.targets import INSTRUMENTED, TARGETS

    if args.target not in TARGETS:
        ap.error(f"unknown target {args.target!r}; targets: {', '.join(TARGETS)}")
    target = TARGETS[args.target]
    args.crashes.mkdir(parents=True, exist_ok=True)
    counter = _Counter(target.name, args.crashes, args.stats)
    with atheris.instrument_imports(include=list(INSTRUMENTED)):
        for seed in sorted(args.corpus.iterdir()):  # the targets import lazily: their modules load instrumented
            try:
                target.run(seed.read_bytes())
            except Exception as exc:
                counter.crash(seed.read_bytes(), exc)

    def one(data: bytes) -> None:
        counter.tick()
        try:
            target.run(data)
        except Exception as exc:  # the target lets only its typed error pass: anything else is a finding
            counter.crash(data, exc)

    counter.write()
    atheris.Setup([sys.argv[0], str(args.corpus), f"-max_total_time={args.seconds}", f"-timeout={args.timeout}",
                   f"-rss_limit_mb={args.rss_limit_mb}", "-print_final_stats=1", "-max_len=65536",
                   f"-artifact_prefix={args.crashes}/"], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

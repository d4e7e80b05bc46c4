"""Build the medfl-agent and medfl-coordinator Debian packages from the PyInstaller bundle.

Usage (``make deb`` runs it after ``make bundle``)::

    python installer/deb/build_deb.py --bundle build/bundle/dist/medfl --out dist/deb [--version 0.1.0]

Each package holds one copy of the one-folder bundle under /opt/medfl-<role>, a /usr/bin symlink,
its hardened systemd unit, and maintainer scripts (installer/deb/<role>.postinst and the shared
prerm/postrm) that create the ``medfl`` system user, /etc/medfl/<role> and /var/lib/medfl/<role>.
Configuration, keys, state and the privacy ledger are never files of the package: an upgrade
leaves them alone, ``remove`` keeps them, and only ``purge`` deletes them.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ROLES = ("agent", "coordinator")
DESCRIPTIONS = {
    "agent": ("medfl hospital agent: federated learning without images leaving the hospital",
              "Trains imaging models with the federation's coordinator by federated learning with DP-SGD\n"
              " and secure aggregation, scores PACS studies, and takes part in encrypted inference.\n"
              " Enroll with: sudo -u medfl medfl-agent enroll FILE --dir /etc/medfl/agent\n"
              "  --state-dir /var/lib/medfl/agent --data DIR (or set MEDFL_INVITATION and MEDFL_DATA\n"
              " when installing)."),
    "coordinator": ("medfl coordinator daemon: aggregation and encrypted-inference rounds",
                    "Runs the federation: approves hospitals (by invitation or fingerprint), schedules jobs,\n"
                    " aggregates updates by secure aggregation and hosts encrypted-inference sessions."),
}


def _version() -> str:
    found = re.search(r'^__version__ = "([^"]+)"', (ROOT / "medfl" / "__init__.py").read_text(), re.M)
    if found is None:
        raise SystemExit("error: no __version__ in medfl/__init__.py; pass --version")
    return found.group(1)


def _size_kib(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) // 1024


def build(role: str, bundle: pathlib.Path, out: pathlib.Path, version: str, compression: str) -> pathlib.Path:
    """Lay out one package's tree and build it with dpkg-deb; returns the .deb's path."""
    exe = bundle / f"medfl-{role}"
    if not exe.is_file():
        raise SystemExit(f"error: {exe} is missing; build the bundle first ('make bundle')")
    pkg = f"medfl-{role}"
    with tempfile.TemporaryDirectory(prefix=f"{pkg}-") as tmp:
        tree = pathlib.Path(tmp) / pkg
        opt = tree / "opt" / pkg
        shutil.copytree(bundle, opt, symlinks=True)
        (tree / "usr" / "bin").mkdir(parents=True)
        os.symlink(f"/opt/{pkg}/{pkg}", tree / "usr" / "bin" / pkg)
        unit_dir = tree / "lib" / "systemd" / "system"
        unit_dir.mkdir(parents=True)
        shutil.copy(ROOT / "installer" / "systemd" / f"{pkg}.service", unit_dir / f"{pkg}.service")
        doc = tree / "usr" / "share" / "doc" / pkg
        doc.mkdir(parents=True)
        shutil.copy(ROOT / "README.md", doc / "README.md")
        (doc / "copyright").write_text(f"{pkg}: medfl, privacy-preserving federated medical image analysis.\n"
                                       "The bundle holds Python 3.11, PyTorch and the libraries named in\n"
                                       "setup.py, each under its own licence (see /opt/" + pkg + "/_internal).\n")
        debian = tree / "DEBIAN"
        debian.mkdir()
        short, long = DESCRIPTIONS[role]
        (debian / "control").write_text(
            f"Package: {pkg}\nVersion: {version}\nArchitecture: amd64\nSection: science\nPriority: optional\n"
            "Maintainer: medfl developers <medfl@localhost>\nDepends: passwd, util-linux\n"
            f"Installed-Size: {_size_kib(tree)}\nDescription: {short}\n {long}\n")
        for script in ("postinst", "prerm", "postrm"):
            src = HERE / f"{role}.{script}" if (HERE / f"{role}.{script}").exists() else HERE / script
            text = src.read_text().replace("@ROLE@", role)
            (debian / script).write_text(text)
            (debian / script).chmod(0o755)
        for p in tree.rglob("*"):  # dpkg wants 0755 folders and no group/other write bits
            if p.is_symlink():
                continue
            mode = p.stat().st_mode & 0o7777
            p.chmod((mode | 0o755) & 0o755 if p.is_dir() else mode & 0o755)
        out.mkdir(parents=True, exist_ok=True)
        deb = out / f"{pkg}_{version}_amd64.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(tree), str(deb)],
                       check=True, stdout=subprocess.DEVNULL)
    return deb


def main(argv: list[str] | None = None) -> int:
    """Build the packages named by --role (both by default); 2 when dpkg-deb is missing."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=pathlib.Path, default=ROOT / "build" / "bundle" / "dist" / "medfl")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "dist" / "deb")
    ap.add_argument("--version", default=None, help="package version (default: medfl.__version__)")
    ap.add_argument("--compression", default="zstd", choices=("zstd", "gzip", "xz", "none"))
    ap.add_argument("--role", choices=ROLES, action="append", help="build only this package (repeatable)")
    args = ap.parse_args(argv)
    if shutil.which("dpkg-deb") is None:
        print("error: dpkg-deb not found; build the packages on Debian or Ubuntu (apt-get install dpkg)",
              file=sys.stderr)
        return 2
    version = args.version or _version()
    for role in args.role or ROLES:
        t = time.monotonic()
        deb = build(role, args.bundle, args.out, version, args.compression)
        print(f"{deb}: {deb.stat().st_size / 2**20:.1f} MiB in {time.monotonic() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

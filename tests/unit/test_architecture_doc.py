"""docs/ARCHITECTURE.md names every package and module of the tree, so the map cannot silently go stale."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
PACKAGES = ("medfl", "agent", "coordinator", "apps")


def _named(word: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(word)}(?![\w])", DOC) is not None


def _tree() -> list[pathlib.Path]:
    return sorted(p for top in PACKAGES for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("top", PACKAGES)
def test_every_package_and_module_is_on_the_map(top):
    missing = []
    for path in _tree():
        if path.parts[len(ROOT.parts)] != top:
            continue
        rel = path.relative_to(ROOT)
        names = [part for part in rel.parts[:-1]] + ([] if path.name == "__init__.py" else [path.stem])
        missing += [f"{rel} ({n})" for n in names if not _named(n)]
    assert not missing, f"docs/ARCHITECTURE.md does not name: {sorted(set(missing))}"


def test_every_csrc_topic_is_on_the_map():
    topics = sorted(p.name for p in (ROOT / "csrc").iterdir() if p.is_dir())
    assert topics and all(_named(t) for t in topics), f"csrc topics missing from the map: {topics}"

"""The kept code of dataclass methods (peercrypt/dataclass_cache.py): a
class made through the cache behaves as the standard library makes it; a
changed class never gets the code of its old text; a damaged or foreign
file is ignored; nothing is written under PYTHONDONTWRITEBYTECODE unless
asked. Each case runs in a fresh interpreter, as a node's start does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from peercrypt import dataclass_cache

pytestmark = pytest.mark.skipif(
    sys.version_info[:2] != (3, 11), reason="the cache is installed on CPython 3.11 only"
)

PROBE = """
import dataclasses, json, sys
from peercrypt import dataclass_cache

@dataclasses.dataclass(frozen=True, kw_only=True)
class Probe:
    FIELDS
    note: str = "n"

a, b = Probe(x=1), Probe(x=1)
try:
    a.x = 2
    frozen = False
except dataclasses.FrozenInstanceError:
    frozen = True
print(json.dumps({
    "repr": repr(a), "eq": a == b, "hash": hash(a) == hash(b), "frozen": frozen,
    "fields": [f.name for f in dataclasses.fields(a)],
    "missed": sorted(dataclass_cache._missed),
}))
dataclass_cache.save(force="force" in sys.argv)
"""


def probe(
    tmp_path: Path, fields: str = "x: int", *args: str, write: bool = True
) -> dict[str, object]:
    """Run the probe as module ``peercrypt.probe_mod`` of a package in ``tmp_path``."""
    package = tmp_path / "peercrypt"
    package.mkdir(exist_ok=True)
    (package / "probe_mod.py").write_text(PROBE.replace("FIELDS", fields))
    real = Path(dataclass_cache.__file__).parent
    # The real package, extended by the probe's folder (a namespace of two paths).
    code = (
        f"import peercrypt; peercrypt.__path__.append({str(package)!r}); import peercrypt.probe_mod"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(real.parent)}
    if not write:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def cache_file(tmp_path: Path) -> Path:
    tag = sys.implementation.cache_tag
    return tmp_path / "peercrypt" / "__pycache__" / f"probe_mod.{tag}.dataclasses"


SAME = {
    "repr": "Probe(x=1, note='n')",
    "eq": True,
    "hash": True,
    "frozen": True,
    "fields": ["x", "note"],
}


def test_a_class_made_from_the_kept_code_behaves_as_the_standard_librarys(tmp_path: Path) -> None:
    first = probe(tmp_path)
    assert {k: first[k] for k in SAME} == SAME
    assert first["missed"] == ["peercrypt.probe_mod"]  # compiled, then kept
    assert cache_file(tmp_path).exists()
    again = probe(tmp_path)
    assert {k: again[k] for k in SAME} == SAME
    assert again["missed"] == []  # every method from the file


def test_a_changed_class_gets_new_code_and_the_file_keeps_what_is_used(tmp_path: Path) -> None:
    probe(tmp_path)
    size = cache_file(tmp_path).stat().st_size
    changed = probe(tmp_path, "x: int\n    y: int = 7")
    assert changed["repr"] == "Probe(x=1, y=7, note='n')"
    assert changed["fields"] == ["x", "y", "note"]
    assert changed["missed"] == ["peercrypt.probe_mod"]
    again = probe(tmp_path, "x: int\n    y: int = 7")
    assert again["missed"] == [] and again["repr"] == changed["repr"]
    assert cache_file(tmp_path).stat().st_size < 2 * size  # the old texts are not kept


@pytest.mark.parametrize("damage", [b"", b"garbage", None])
def test_a_damaged_or_foreign_file_is_ignored(tmp_path: Path, damage: bytes | None) -> None:
    probe(tmp_path)
    path = cache_file(tmp_path)
    kept = path.read_bytes()
    if damage is None:  # another Python's header, a well-formed table
        path.write_bytes(b"\x00\x00\r\n" + kept[4:])
    else:
        path.write_bytes(kept[: len(kept) // 2] + damage)
    result = probe(tmp_path)
    assert {k: result[k] for k in SAME} == SAME
    assert result["missed"] == ["peercrypt.probe_mod"]


def test_nothing_is_written_under_dontwritebytecode_unless_asked(tmp_path: Path) -> None:
    probe(tmp_path, write=False)
    assert not cache_file(tmp_path).exists()
    probe(tmp_path, "x: int", "force", write=False)
    assert cache_file(tmp_path).exists()

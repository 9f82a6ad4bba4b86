"""README.md's measured table is what the committed records give, and the records name no
directory of the machine they were made on."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))


def test_the_readme_table_is_generated_from_the_committed_records():
    import readme
    from page import group
    from records import RECORDS, load_records

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    committed = readme.current(text)
    assert committed is not None, f"README.md has no {readme.BEGIN} ... {readme.END} block"
    expected = readme.block(group(load_records(RECORDS), key="study"))
    assert committed == expected, (
        "README.md's measured table differs from the records: run `python experiments/report.py`"
    )
    assert "2,201 updates" not in committed and "`default/gcnn-8-small-s1`" in committed


def test_rewriting_replaces_only_the_block():
    import readme

    from gcnn.errors import GcnnError

    text = f"intro\n{readme.BEGIN}\nold\n{readme.END}\noutro\n"
    new = readme.rewrite(text, f"{readme.BEGIN}\nnew\n{readme.END}")
    assert new == f"intro\n{readme.BEGIN}\nnew\n{readme.END}\noutro\n"
    with pytest.raises(GcnnError, match="results:begin"):
        readme.rewrite("no markers here", "x")


ABSOLUTE = re.compile(r"(^|[\s='\"])/[\w.-]+/")  # /work/..., --out=/tmp/...; not "GFLOP / s"


def absolute_paths(value, where="") -> list[str]:
    if isinstance(value, str):
        return [where] if ABSOLUTE.search(value) else []
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in absolute_paths(v, f"{where}[{i}]")]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in absolute_paths(v, f"{where}.{k}")]
    return []


def test_committed_records_hold_no_absolute_paths():
    paths = sorted((ROOT / "experiments" / "records").rglob("*.json"))
    assert paths
    for path in paths:
        found = absolute_paths(json.loads(path.read_text(encoding="utf-8")))
        assert not found, f"{path.relative_to(ROOT)}: absolute paths at {found}"

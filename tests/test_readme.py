"""The README stays true: every setting is in its table, with the quality thresholds' defaults."""

from __future__ import annotations

import re

from agelens.quality import QualityThresholds
from service.settings import Settings
from tests.conftest import REPO

README = (REPO / "README.md").read_text()
ROWS = [line for line in README.splitlines() if line.startswith("| `AGELENS_")]


def _row_of(env: str) -> str | None:
    """The settings-table row naming `env`, in full or as a `_TAIL` shorthand after a sibling."""
    parts = env.split("_")
    for row in ROWS:
        if f"`{env}`" in row:
            return row
        for i in range(2, len(parts) - 1):
            if f"`_{'_'.join(parts[i:])}`" in row and "_".join(parts[:i]) in row:
                return row
    return None


def test_every_setting_is_in_the_readme_table() -> None:
    missing = [
        f"AGELENS_{name.upper()}" for name in Settings.model_fields if not _row_of(f"AGELENS_{name.upper()}")
    ]
    assert not missing, missing


def test_quality_defaults_in_the_readme_are_the_code_defaults() -> None:
    for name, value in QualityThresholds().model_dump().items():
        row = _row_of(f"AGELENS_QUALITY_{name.upper()}")
        assert row is not None
        defaults = re.findall(r"`([\d.]+)`", row.split("|")[2])
        assert any(float(d) == value for d in defaults), (name, value, row)

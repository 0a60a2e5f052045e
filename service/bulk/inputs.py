"""The images a bulk job reads: files, folders (recursive) and CSV files of paths."""

from __future__ import annotations

import csv
from pathlib import Path

from agelens.imaging import SUPPORTED_SUFFIXES

# A CSV names its images in this column (or, without a header that has it, in the first column).
PATH_COLUMN = "path"


def _from_csv(path: Path) -> list[Path]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0]]
    col, body = (header.index(PATH_COLUMN), rows[1:]) if PATH_COLUMN in header else (0, rows)
    base = path.parent
    out = []
    for row in body:
        if len(row) > col and row[col].strip():
            p = Path(row[col].strip())
            out.append(p if p.is_absolute() else base / p)
    return out


def expand_inputs(inputs: list[str]) -> list[str]:
    """Every image path the inputs name, in a stable order, each once.

    A folder contributes its image files (by suffix, recursively, sorted); a `.csv` file the
    paths in its `path` column (relative to the CSV's folder); any other file itself, whatever
    its suffix, so that a broken or mislabelled file becomes an error row rather than vanishing.
    """
    seen: dict[str, None] = {}
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED_SUFFIXES)
        elif p.suffix.lower() == ".csv":
            found = _from_csv(p)
        else:
            found = [p]
        for f in found:
            seen.setdefault(str(f), None)
    return list(seen)

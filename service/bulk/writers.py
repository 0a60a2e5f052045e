"""Output files of a bulk job, appended one batch at a time so that a run can resume.

- `.jsonl`: one JSON object per row; `.csv`: one line per row with a header. A batch is written
  and flushed whole; a line cut short by a kill is dropped when the run resumes.
- `.parquet`: a folder of part files (`part-00000.parquet`, ...), one per batch, each written
  under a temporary name and renamed, so a part is either complete or absent. pyarrow and pandas
  read the folder as one table (`pyarrow.parquet.read_table("results.parquet")`).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from service.bulk.rows import COLUMNS, SCHEMA, Row

FORMATS = (".jsonl", ".csv", ".parquet")


class Writer(Protocol):
    def done_paths(self) -> set[str]: ...
    def write(self, rows: list[Row]) -> None: ...
    def close(self) -> None: ...


def _truncate_partial_line(path: Path) -> None:
    """Cut a file back to its last newline: a kill in the middle of a write leaves a partial row."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(end)


class _AppendedLines:
    """A text file a job appends to, one row per line. Reopened, it loses a partial last line;
    each batch goes in as one write, then is flushed and synced."""

    def __init__(self, path: Path, newline: str | None = None) -> None:
        self.path = path
        self.fresh = not path.exists() or path.stat().st_size == 0
        if not self.fresh:
            _truncate_partial_line(path)
        self._fh = open(path, "a", newline=newline, encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _append(self, text: str) -> None:
        self._fh.write(text)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


class JsonlWriter(_AppendedLines):
    def done_paths(self) -> set[str]:
        with open(self.path, encoding="utf-8") as fh:
            return {json.loads(line)["path"] for line in fh if line.strip()}

    def write(self, rows: list[Row]) -> None:
        self._append("".join(json.dumps(r) + "\n" for r in rows))


def _csv_text(rows: list[Row], header: bool = False) -> str:
    """Rows as CSV text, built whole before it is written: a batch that fails half-way leaves
    nothing in the file, so no image is left with only some of its faces."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    if header:
        w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


class CsvWriter(_AppendedLines):
    def __init__(self, path: Path) -> None:
        super().__init__(path, newline="")
        if self.fresh:
            self._append(_csv_text([], header=True))

    def done_paths(self) -> set[str]:
        with open(self.path, newline="", encoding="utf-8") as fh:
            return {row["path"] for row in csv.DictReader(fh)}

    def write(self, rows: list[Row]) -> None:
        self._append(_csv_text(rows))


class ParquetWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.tmp"):
            stale.unlink()
        parts = sorted(path.glob("part-*.parquet"))
        self._next = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0

    def done_paths(self) -> set[str]:
        if not any(self.path.glob("part-*.parquet")):
            return set()
        return set(pq.read_table(self.path, columns=["path"]).column("path").to_pylist())

    def write(self, rows: list[Row]) -> None:
        if not rows:
            return
        final = self.path / f"part-{self._next:05d}.parquet"
        tmp = final.with_suffix(".tmp")
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp)
        os.replace(tmp, final)
        self._next += 1

    def close(self) -> None:
        pass


def open_writer(out: Path) -> Writer:
    suffix = out.suffix.lower()
    if suffix == ".jsonl":
        return JsonlWriter(out)
    if suffix == ".csv":
        return CsvWriter(out)
    if suffix == ".parquet":
        return ParquetWriter(out)
    raise ValueError(f"--out must end in one of {', '.join(FORMATS)}: {out}")


def read_rows(out: Path) -> list[Row]:
    """Every row of a bulk job's output, whatever its format (for tests and checks)."""
    suffix = out.suffix.lower()
    if suffix == ".parquet":
        return pq.read_table(out).to_pylist()
    if suffix == ".jsonl":
        return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
    with open(out, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))

"""Dataset records, UTKFace filename parsing, the deterministic split, and the CSV manifest format.

CSV manifest format (for datasets other than UTKFace), UTF-8 with a header row:

    path,age
    images/0001.jpg,34
    images/0002.png,7

`path` is relative to the CSV file's folder (or absolute); `age` is an integer >= 0 (ages above
100 are clipped into the open-ended 100+ class). Optional columns `gender`, `race` and `split`
(train/val/test) are kept when present; without `split` the same deterministic rule as UTKFace's
assigns one.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")
# Fractions of the hash space for train / val / test: 70 / 10 / 20.
SPLIT_BOUNDS = (0.70, 0.80)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

log = logging.getLogger("training.data")


@dataclass(frozen=True)
class Record:
    filename: str  # relative to the dataset root
    age: int
    gender: int | None = None
    race: int | None = None
    split: str = ""


def parse_utkface_name(name: str) -> tuple[int, int | None, int | None]:
    """Age, gender and race from a UTKFace filename.

    The age is always the first '_' field; 8 files break the rest of the pattern (missing race,
    odd timestamps, a stray space), so gender and race are None when they do not parse.
    """
    fields = name.split("_")
    age = int(fields[0])

    def small_int(i: int, upper: int) -> int | None:
        if len(fields) <= i:
            return None
        tok = fields[i]
        if tok.isdigit() and len(tok) == 1 and 0 <= int(tok) <= upper:
            return int(tok)
        return None

    gender = small_int(1, 1)
    # When the race field is missing, field 2 is the long timestamp, which small_int rejects.
    race = small_int(2, 4)
    return age, gender, race


def split_of(key: str) -> str:
    """Deterministic split from a string key: a stable hash, independent of the file order."""
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    if h < SPLIT_BOUNDS[0]:
        return "train"
    if h < SPLIT_BOUNDS[1]:
        return "val"
    return "test"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_utkface_split(
    root: Path, parse: Callable[[str], tuple[int, int | None, int | None]] = parse_utkface_name
) -> tuple[list[Record], dict[str, int]]:
    """Scan a folder of labelled file names (UTKFace's by default) and assign each file a split.

    Byte-identical files form a group: the group is split by its first filename, so copies never
    cross parts; groups whose copies disagree on age are dropped (the label is unknowable).
    """
    files = sorted(p for p in root.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
    groups: dict[str, list[Path]] = defaultdict(list)
    for p in files:
        groups[file_sha256(p)].append(p)
    records: list[Record] = []
    stats = {"files": len(files), "duplicate_groups": 0, "dropped_conflicting": 0}
    for members in groups.values():
        members.sort(key=lambda p: p.name)
        parsed = [parse(p.name) for p in members]
        if len(members) > 1:
            stats["duplicate_groups"] += 1
            if len({a for a, _, _ in parsed}) > 1:
                stats["dropped_conflicting"] += len(members)
                continue
        part = split_of(members[0].name)
        for p, (age, gender, race) in zip(members, parsed, strict=True):
            records.append(Record(p.name, age, gender, race, part))
    records.sort(key=lambda r: r.filename)
    return records, stats


def _optional_int(row: dict[str, str], col: str) -> int | None:
    v = (row.get(col) or "").strip()
    return int(v) if v else None


def read_csv_manifest(csv_path: Path) -> list[Record]:
    base = csv_path.parent
    out: list[Record] = []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"path", "age"} <= set(reader.fieldnames):
            raise ValueError(f"{csv_path}: a CSV manifest needs the columns 'path' and 'age'")
        for row in reader:
            path = row["path"]
            rel = path if Path(path).is_absolute() else str(Path(path))
            age = int(row["age"])
            if age < 0:
                raise ValueError(f"{csv_path}: negative age for {path}")

            split = (row.get("split") or "").strip() or split_of(Path(path).name)
            if split not in SPLITS:
                raise ValueError(f"{csv_path}: unknown split {split!r} for {path}")
            out.append(
                Record(
                    str(base / rel) if not Path(rel).is_absolute() else rel,
                    age,
                    _optional_int(row, "gender"),
                    _optional_int(row, "race"),
                    split,
                )
            )
    return out


def write_split(records: Iterable[Record], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["filename", "age", "gender", "race", "split"])
        for r in records:
            w.writerow(
                [
                    r.filename,
                    r.age,
                    "" if r.gender is None else r.gender,
                    "" if r.race is None else r.race,
                    r.split,
                ]
            )


def record_from_row(row: dict[str, str]) -> Record:
    """A Record from a row of the split file or of a cache index (same column names)."""
    return Record(
        row["filename"],
        int(row["age"]),
        _optional_int(row, "gender"),
        _optional_int(row, "race"),
        row["split"],
    )


def read_split(path: Path) -> list[Record]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [record_from_row(row) for row in csv.DictReader(fh)]


def utkface_records(root: Path, split: Path) -> list[Record]:
    """A UTKFace folder's records in `split`'s parts; the split is built from the folder and
    written first when the file does not exist yet (it is committed, so that is a new copy)."""
    if split.exists():
        return read_split(split)
    records, stats = build_utkface_split(root)
    write_split(records, split)
    log.info("wrote split %s: %s", split, stats)
    return records

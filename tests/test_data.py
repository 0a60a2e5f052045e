from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import DATASET, SPLIT, needs_dataset, split_rows
from training.data import (
    build_utkface_split,
    parse_utkface_name,
    read_csv_manifest,
    read_split,
    split_of,
    utkface_records,
)

ODD_NAMES = {
    "14_0_0_2017011022340900.jpg.chip.jpg": (14, 0, 0),
    "24_0_1_20170116220224657 .jpg.chip.jpg": (24, 0, 1),
    "28_1_2_201701161846515488.jpg.chip.jpg": (28, 1, 2),
    "38_0_1_201701162330572788.jpg.chip.jpg": (38, 0, 1),
    "39_1_20170116174525125.jpg.chip.jpg": (39, 1, None),
    "55_0_0_20170116232725357jpg.chip.jpg": (55, 0, 0),
    "61_1_20170109142408075.jpg.chip.jpg": (61, 1, None),
    "61_1_20170109150557335.jpg.chip.jpg": (61, 1, None),
}


@pytest.mark.parametrize(("name", "expected"), ODD_NAMES.items())
def test_parse_odd_utkface_names(name: str, expected: tuple[int, int, int | None]) -> None:
    assert parse_utkface_name(name) == expected


def test_parse_regular_name() -> None:
    assert parse_utkface_name("100_1_2_20170105174847679.jpg.chip.jpg") == (100, 1, 2)
    assert parse_utkface_name("1_0_4_20161221193016140.jpg.chip.jpg") == (1, 0, 4)


def test_split_of_is_deterministic_and_balanced() -> None:
    names = [f"{i}_0_0_2017{i:09d}.jpg" for i in range(20000)]
    parts = [split_of(n) for n in names]
    assert parts == [split_of(n) for n in names]
    share = {p: parts.count(p) / len(parts) for p in ("train", "val", "test")}
    assert share["train"] == pytest.approx(0.70, abs=0.015)
    assert share["val"] == pytest.approx(0.10, abs=0.01)
    assert share["test"] == pytest.approx(0.20, abs=0.015)


def test_duplicates_stay_together_and_conflicts_are_dropped(tmp_path: Path) -> None:
    (tmp_path / "30_0_0_20170101000000001.jpg.chip.jpg").write_bytes(b"same")
    (tmp_path / "30_1_0_20170101000000002.jpg.chip.jpg").write_bytes(b"same")  # same age: kept, same part
    (tmp_path / "40_0_0_20170101000000003.jpg.chip.jpg").write_bytes(b"conflict")
    (tmp_path / "41_0_0_20170101000000004.jpg.chip.jpg").write_bytes(b"conflict")  # other age: dropped
    for i in range(20):
        (tmp_path / f"{20 + i}_0_0_201701010000001{i:02d}.jpg.chip.jpg").write_bytes(f"u{i}".encode())
    records, stats = build_utkface_split(tmp_path)
    names = {r.filename: r for r in records}
    assert "40_0_0_20170101000000003.jpg.chip.jpg" not in names
    assert "41_0_0_20170101000000004.jpg.chip.jpg" not in names
    a, b = names["30_0_0_20170101000000001.jpg.chip.jpg"], names["30_1_0_20170101000000002.jpg.chip.jpg"]
    assert a.split == b.split
    assert stats == {"files": 24, "duplicate_groups": 2, "dropped_conflicting": 2}
    assert len(records) == 22


def test_a_missing_utkface_split_is_written_once_then_read(tmp_path: Path) -> None:
    for i in range(12):
        (tmp_path / f"{20 + i}_0_0_201701010000001{i:02d}.jpg.chip.jpg").write_bytes(f"u{i}".encode())
    split = tmp_path / "split.csv"
    first = utkface_records(tmp_path, split)
    assert split.exists() and read_split(split) == first
    (tmp_path / "50_0_0_20170101000000999.jpg.chip.jpg").write_bytes(b"new")
    # The written split is the truth from then on: a new file in the folder does not join it.
    assert utkface_records(tmp_path, split) == first


def test_committed_split_shape() -> None:
    rows = split_rows()
    assert len(rows) == 23289
    counts = {p: sum(r["split"] == p for r in rows) for p in ("train", "val", "test")}
    assert counts == {"train": 16324, "val": 2362, "test": 4603}
    assert len({r["filename"] for r in rows}) == len(rows)


@needs_dataset
def test_committed_split_matches_the_data_and_keeps_duplicates_together() -> None:
    records = read_split(SPLIT)
    by_hash: dict[str, set[str]] = defaultdict(set)
    for r in records:
        path = DATASET / r.filename
        assert path.is_file(), r.filename
        assert parse_utkface_name(r.filename)[0] == r.age
        by_hash[hashlib.sha256(path.read_bytes()).hexdigest()].add(r.split)
    assert all(len(parts) == 1 for parts in by_hash.values()), "a duplicate group crosses split parts"
    rebuilt, _ = build_utkface_split(DATASET)
    assert [(r.filename, r.age, r.split) for r in rebuilt] == [(r.filename, r.age, r.split) for r in records]


def test_csv_manifest(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path,age,split\nimgs/a.jpg,34,train\nimgs/b.png,7,\n")
    recs = read_csv_manifest(tmp_path / "m.csv")
    assert [r.age for r in recs] == [34, 7]
    assert recs[0].split == "train" and recs[1].split in ("train", "val", "test")
    assert recs[0].filename == str(tmp_path / "imgs/a.jpg")
    (tmp_path / "bad.csv").write_text("file,years\nx.jpg,3\n")
    with pytest.raises(ValueError, match="path"):
        read_csv_manifest(tmp_path / "bad.csv")

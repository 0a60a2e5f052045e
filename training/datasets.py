"""The dataset registry (training/datasets.toml): where each dataset lives, how its labels are read,
its committed split, its crop cache and its terms. A new dataset is a new entry, not new code."""

from __future__ import annotations

import logging
import re
import tomllib
from functools import cached_property
from pathlib import Path

from pydantic import BaseModel, Field, model_validator

from training.data import (
    IMAGE_SUFFIXES,
    Record,
    build_utkface_split,
    read_csv_manifest,
    read_split,
    write_split,
)
from training.near_duplicates import near_duplicate_groups, perceptual_hashes, stratified_split

log = logging.getLogger(__name__)

REGISTRY = Path(__file__).with_name("datasets.toml")


class DatasetEntry(BaseModel):
    name: str
    title: str
    root: Path
    # Labels from the file name (named groups age, gender, race, serial) ...
    filename_pattern: str | None = None
    # ... or from a CSV manifest (training/data.py's format).
    manifest: Path | None = None
    race_names: list[str] = []
    gender_by_serial: list[tuple[int, int, int]] = []
    split: Path
    split_rule: str = Field("hash", pattern="^(hash|stratified)$")
    cache: Path
    terms: str

    @model_validator(mode="after")
    def _one_label_source(self) -> DatasetEntry:
        if (self.filename_pattern is None) == (self.manifest is None):
            raise ValueError(f"dataset {self.name}: give filename_pattern or manifest, not both or neither")
        if self.filename_pattern is not None and "(?P<age>" not in self.filename_pattern:
            raise ValueError(f"dataset {self.name}: filename_pattern needs a group named age")
        return self

    @cached_property
    def _pattern(self) -> re.Pattern[str] | None:
        return re.compile(self.filename_pattern) if self.filename_pattern else None

    def parse_name(self, filename: str) -> Record | None:
        """A record (no split yet) from a file name, or None when the name carries no label."""
        assert self._pattern is not None
        m = self._pattern.match(filename)
        if m is None:
            return None
        groups = m.groupdict()
        gender = int(groups["gender"]) if groups.get("gender") else None
        if self.gender_by_serial and groups.get("serial"):
            serial = int(groups["serial"])
            gender = next((g for first, last, g in self.gender_by_serial if first <= serial <= last), None)
        race = int(groups["race"]) if groups.get("race") else None
        return Record(filename, int(groups["age"]), gender, race)

    def scan(self) -> list[Record]:
        """Every labelled image of the dataset, sorted by name, with no split assigned."""
        if self.manifest is not None:
            return read_csv_manifest(self.manifest)
        files = sorted(p.name for p in self.root.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))
        return [r for r in map(self.parse_name, files) if r is not None]

    def race_name(self, race: int | None) -> str | None:
        return self.race_names[race] if race is not None and race < len(self.race_names) else None


def load_registry(path: Path = REGISTRY) -> dict[str, DatasetEntry]:
    with open(path, "rb") as fh:
        raw = tomllib.load(fh)
    return {name: DatasetEntry.model_validate({"name": name, **entry}) for name, entry in raw.items()}


def dataset(name: str, path: Path = REGISTRY) -> DatasetEntry:
    registry = load_registry(path)
    if name not in registry:
        raise KeyError(f"no dataset {name!r} in {path}; known: {', '.join(registry)}")
    return registry[name]


def build_split(entry: DatasetEntry) -> tuple[list[Record], dict[str, int]]:
    """The dataset's split by its rule (see datasets.toml), with what was found on the way."""
    if entry.split_rule == "hash" and entry.manifest is not None:
        # read_csv_manifest gives rows without a split column their hash split.
        return read_csv_manifest(entry.manifest), {}
    if entry.split_rule == "hash":

        def labels(name: str) -> tuple[int, int | None, int | None]:
            r = entry.parse_name(name)
            if r is None:
                raise ValueError(f"{entry.name}: {name} does not match filename_pattern")
            return r.age, r.gender, r.race

        return build_utkface_split(entry.root, labels)
    records = entry.scan()
    groups = near_duplicate_groups(perceptual_hashes([entry.root / r.filename for r in records]))
    multi = [g for g in groups if len(g) > 1]
    stats = {
        "images": len(records),
        "near_duplicate_groups": len(multi),
        "images_in_groups": sum(len(g) for g in multi),
        "largest_group": max((len(g) for g in multi), default=1),
        "groups_with_conflicting_ages": sum(len({records[i].age for i in g}) > 1 for g in multi),
    }
    return stratified_split(records, groups), stats


def ensure_split(entry: DatasetEntry) -> list[Record]:
    """The committed split; built and written first when it does not exist yet."""
    if entry.split.exists():
        return read_split(entry.split)
    records, stats = build_split(entry)
    write_split(records, entry.split)
    log.info("%s: wrote split %s (%s)", entry.name, entry.split, stats)
    return records

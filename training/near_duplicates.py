"""Near-identical images (the same photo re-encoded, resized or re-cropped) found by perceptual
hash, and a stratified split that keeps each group of them on one side.

The hash is OpenCV's pHash (64-bit DCT hash, `cv2.img_hash`). On All-Age-Faces' aligned faces,
pairs within 3 bits were the same photo in every case looked at, 4 bits mostly, and from 5 bits
on they are mostly different people posed alike; `MAX_DISTANCE` = 6 errs towards grouping, which
costs nothing but a little freedom in the split, while a missed copy would leak a face into test.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from training.data import SPLITS, Record

MAX_DISTANCE = 6
FRACTIONS = {"train": 0.70, "val": 0.10, "test": 0.20}


def perceptual_hashes(paths: list[Path]) -> NDArray[np.uint8]:
    """(N, 64) bits of each image's pHash."""
    hasher = cv2.img_hash.PHash_create()
    out = np.zeros((len(paths), 8), dtype=np.uint8)
    for i, p in enumerate(paths):
        img = cv2.imread(str(p))
        if img is None:
            raise ValueError(f"cannot read {p}")
        out[i] = hasher.compute(img)[0]
    return np.unpackbits(out, axis=1)


def near_duplicate_groups(bits: NDArray[np.uint8], max_distance: int = MAX_DISTANCE) -> list[list[int]]:
    """Connected components of the graph 'Hamming distance <= max_distance' (union-find)."""
    b = bits.astype(np.int32)
    ones = b.sum(1)
    parent = list(range(len(b)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # Row blocks keep the distance matrix small (a full N x N int32 is 300 MB at 8,636 images).
    for start in range(0, len(b), 1024):
        block = b[start : start + 1024]
        dist = ones[start : start + 1024, None] + ones[None, :] - 2 * (block @ b.T)
        for i, j in zip(*np.nonzero(dist <= max_distance), strict=True):
            a, c = find(start + int(i)), find(int(j))
            if a != c:
                parent[max(a, c)] = min(a, c)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(b)):
        groups[find(i)].append(i)
    return sorted(groups.values())


def _stable_key(name: str) -> bytes:
    return hashlib.sha256(name.encode("utf-8")).digest()


def age_band(age: int) -> int:
    return min(age // 10, 7)  # 70+ together: the 80s are 35 faces


def stratified_split(records: list[Record], groups: list[list[int]]) -> list[Record]:
    """Each group of near-identical images to one part, about 70/10/20 within every (age band,
    gender) stratum. Deterministic: groups are visited in the order of a hash of their first
    name, and each goes to the part furthest below its share of the stratum so far."""
    strata: dict[tuple[int, int | None], list[list[int]]] = defaultdict(list)
    for g in groups:
        first = records[g[0]]
        strata[(age_band(first.age), first.gender)].append(g)
    split = [""] * len(records)
    for _, members in sorted(strata.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1])):
        members.sort(key=lambda g: _stable_key(records[g[0]].filename))
        counts = dict.fromkeys(SPLITS, 0)
        for g in members:
            part = min(SPLITS, key=lambda s: counts[s] / FRACTIONS[s])
            counts[part] += len(g)
            for i in g:
                split[i] = part
    return [Record(r.filename, r.age, r.gender, r.race, s) for r, s in zip(records, split, strict=True)]

"""`agelens batch` on real faces and real files: one row per face, an error row per broken or
faceless image, the same rows in every format and from both engines, and a resume that neither
loses nor repeats an image."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, faces_in_test_split, needs_dataset

pytestmark = [needs_dataset, pytest.mark.slow]


def _key(row: dict) -> tuple[str, int]:
    return (row["path"], -1 if row["face"] is None else int(row["face"]))


def make_inputs(folder: Path, n_faces: int) -> dict[str, int]:
    """Face chips under folder/ (one in a subfolder), a text file named .jpg, a faceless grey
    image and an unreadable file; returns each face's path and true age."""
    (folder / "sub").mkdir(parents=True)
    ages = {}
    for i, (path, age) in enumerate(faces_in_test_split(1, 90, n_faces)):
        dest = folder / ("sub" if i == 0 else "") / path.name
        dest.write_bytes(path.read_bytes())
        ages[str(dest)] = age
    (folder / "not_an_image.jpg").write_text("hello")
    Image.new("RGB", (320, 240), (128, 128, 128)).save(folder / "grey.png")
    return ages


def run_batch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agelens.cli", "batch", *args],
        cwd=REPO,
        env={**os.environ, "GLOG_minloglevel": "2", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_rows_errors_and_formats(tmp_path: Path) -> None:
    from service.bulk.writers import read_rows

    ages = make_inputs(tmp_path / "in", 12)
    outs = {fmt: tmp_path / f"ages.{fmt}" for fmt in ("jsonl", "csv", "parquet")}
    for out in outs.values():
        proc = run_batch(str(tmp_path / "in"), "--out", str(out), "--batch-size", "4")
        assert proc.returncode == 0, proc.stderr
        assert "14 images" in proc.stderr.splitlines()[-1] and "12 faces" in proc.stderr.splitlines()[-1]
    rows = sorted(read_rows(outs["parquet"]), key=_key)
    assert len(rows) == 14
    by_path = {r["path"]: r for r in rows}
    assert by_path[str(tmp_path / "in" / "not_an_image.jpg")]["error"] == "invalid_image"
    assert by_path[str(tmp_path / "in" / "grey.png")]["error"] == "no_face"
    faces = [r for r in rows if r["error"] is None]
    assert len(faces) == 12 and {r["path"] for r in faces} == set(ages)
    err = np.array([abs(r["age"] - ages[r["path"]]) for r in faces])
    assert np.median(err) < 8, err
    assert all(r["age_low"] <= r["age"] <= r["age_high"] and r["usable"] for r in faces)
    # The same rows in every format (CSV holds text: compare the key fields).
    jsonl = sorted(read_rows(outs["jsonl"]), key=_key)
    assert jsonl == rows
    csv_rows = sorted(read_rows(outs["csv"]), key=lambda r: (r["path"], int(r["face"] or -1)))
    assert [(r["path"], r["error"] or None) for r in csv_rows] == [(r["path"], r["error"]) for r in rows]
    assert [round(float(r["age"]), 2) for r in csv_rows if r["age"]] == [r["age"] for r in rows if r["age"]]


def test_csv_of_paths_and_a_missing_file(tmp_path: Path) -> None:
    from service.bulk.writers import read_rows

    ages = make_inputs(tmp_path / "in", 3)
    listing = tmp_path / "list.csv"
    names = [str(Path(p).relative_to(tmp_path)) for p in ages] + ["in/missing.jpg"]
    listing.write_text("path,note\n" + "".join(f"{n},x\n" for n in names))
    proc = run_batch(str(listing), "--out", str(tmp_path / "out.jsonl"))
    assert proc.returncode == 0, proc.stderr
    rows = read_rows(tmp_path / "out.jsonl")
    assert len(rows) == 4
    missing = [r for r in rows if r["path"].endswith("missing.jpg")]
    assert missing[0]["error"] == "unreadable" and "FileNotFoundError" in missing[0]["message"]


def test_interrupted_run_resumes_without_losing_or_repeating(tmp_path: Path) -> None:
    from service.bulk.writers import read_rows

    ages = make_inputs(tmp_path / "in", 40)
    out = tmp_path / "ages.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agelens.cli",
            "batch",
            str(tmp_path / "in"),
            "--out",
            str(out),
            "--batch-size",
            "2",
        ],
        cwd=REPO,
        env={**os.environ, "GLOG_minloglevel": "2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while (not out.exists() or len(out.read_text().splitlines()) < 4) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "run the same command to resume" in err
    first = read_rows(out)
    assert 4 <= len(first) < 42
    again = run_batch(str(tmp_path / "in"), "--out", str(out), "--batch-size", "2")
    assert again.returncode == 0, again.stderr
    assert "already in" in again.stderr
    rows = read_rows(out)
    assert len(rows) == 42 and len({_key(r) for r in rows}) == 42
    assert {r["path"] for r in rows if r["error"] is None} == set(ages)


@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray is not installed (pip install '.[ray]')"
)
def test_ray_engine_gives_the_rows_of_the_local_engine(tmp_path: Path) -> None:
    from service.bulk.writers import read_rows

    make_inputs(tmp_path / "in", 300)
    local, ray_out = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    assert run_batch(str(tmp_path / "in"), "--out", str(local)).returncode == 0
    proc = run_batch(str(tmp_path / "in"), "--out", str(ray_out), "--engine", "ray", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    a, b = sorted(read_rows(local), key=_key), sorted(read_rows(ray_out), key=_key)
    assert len(a) == 302 and a == b

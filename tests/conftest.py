"""Shared fixtures. Tests that need real faces read them from ../shared/datasets/utkface and skip
with a clear reason when it is absent; everything else makes its own images."""

from __future__ import annotations

import csv
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
from PIL import Image

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parent.parent
DATASET = Path(os.environ.get("AGELENS_UTKFACE", REPO.parent / "shared" / "datasets" / "utkface"))
SPLIT = REPO / "training" / "splits" / "utkface.csv"
os.environ.setdefault("GLOG_minloglevel", "2")


def dataset_available() -> bool:
    return DATASET.is_dir() and any(DATASET.glob("*.jpg"))


needs_dataset = pytest.mark.skipif(
    not dataset_available(),
    reason=f"UTKFace not found at {DATASET} (set AGELENS_UTKFACE); real-face tests skipped",
)


def split_rows() -> list[dict[str, str]]:
    with open(SPLIT, newline="") as fh:
        return list(csv.DictReader(fh))


def faces_in_test_split(lo: int, hi: int, n: int) -> list[tuple[Path, int]]:
    """The first n test-split faces with lo <= age <= hi (deterministic: sorted by filename)."""
    rows = [r for r in split_rows() if r["split"] == "test" and lo <= int(r["age"]) <= hi]
    return [(DATASET / r["filename"], int(r["age"])) for r in rows[:n]]


def face_bytes(path: Path) -> bytes:
    return path.read_bytes()


def face_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def encode(arr_or_img: np.ndarray | Image.Image, fmt: str = "JPEG", **kw: object) -> bytes:
    img = Image.fromarray(arr_or_img) if isinstance(arr_or_img, np.ndarray) else arr_or_img
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="session")
def app_client() -> Iterator[object]:
    """The real app, real ONNX model from model_store/, real MediaPipe, through the ASGI interface."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(max_upload_bytes=8 * 1024 * 1024, max_faces=20))
    with TestClient(app) as client:
        yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def agelens_serve(*args: str, env: dict[str, str] | None = None, ready_in_a_row: int = 1) -> Iterator[str]:
    """`agelens serve` in a child process on a free loopback port; yields its URL once /ready has
    answered 200 `ready_in_a_row` times in a row (with several workers, each answer may come
    from another one), and stops it on exit."""
    port = free_port()
    full_env = {**os.environ, "GLOG_minloglevel": "2", **(env or {})}
    # Its log goes to a file: a pipe nobody reads would block the server once its buffer fills.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agelens.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=REPO,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        deadline, ok = time.time() + 120, 0
        try:
            while ok < ready_in_a_row:
                if proc.poll() is not None:
                    log.seek(0)
                    pytest.fail(f"server exited early ({proc.returncode}):\n{log.read().decode()[-3000:]}")
                if time.time() > deadline:
                    pytest.fail("server did not become ready in 120 s")
                try:
                    ok = ok + 1 if httpx.get(f"{url}/ready", timeout=2).status_code == 200 else 0
                except httpx.TransportError:
                    ok = 0
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    """A real `agelens serve` process (shared by the e2e, browser and fuzz tests)."""
    with agelens_serve(env={"AGELENS_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024)}) as url:
        yield url


def crops(n: int, seed: int) -> torch.Tensor:
    """`n` uint8 crops (N, 64, 64, 3) for tests of the training code."""
    import torch  # here, not at the top: the service's tests must not need torch

    # Smooth random images: closer to faces' statistics than white noise, no dataset needed.
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g)
    img = torch.nn.functional.interpolate(low, size=64, mode="bilinear", align_corners=False)
    return (img.permute(0, 2, 3, 1) * 255).round().to(torch.uint8)


def network_to_fold(seed: int = 0) -> torch.nn.Module:
    """An untrained student in eval mode with non-trivial BN statistics and scales, so that
    folding them into the convolutions (ONNX export, onnx_import) is exercised."""
    import torch

    from training.models import AgeClassifier

    torch.manual_seed(seed)
    model = AgeClassifier().eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model


def export_student(path: Path, seed: int = 0, flip: bool = True) -> Path:
    """`network_to_fold(seed)` exported as the pipeline exports a student: ONNX, fp16-stored
    weights, the mirror averaged in the graph."""
    from training.export import ViewAveraged, export_onnx, store_weights_fp16

    fp32 = path.with_suffix(".fp32.onnx")
    export_onnx(ViewAveraged(network_to_fold(seed), flip).eval(), fp32, 64)
    store_weights_fp16(fp32, path)
    return path


@pytest.fixture(scope="session")
def student_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_student(tmp_path_factory.mktemp("student") / "model.onnx")


def register_test_model(store: Path, version: str, seed: int, int8_mae_loss: float) -> Path:
    """A model-store entry built here, as the export stage builds one: an exported network, its
    int8 copy quantised on smooth random crops, a manifest and a card. Its metrics are made up:
    `int8_mae_loss` sets how much worse the int8 file is said to be."""
    from agelens.manifest import AlignmentSpec, Int8Variant, Metrics, Normalisation, sha256_file
    from training.augment import normalise, to_float
    from training.export import quantize_int8, register

    work = store.parent / f"work-{version}"
    work.mkdir(parents=True, exist_ok=True)
    onnx_path = export_student(work / "model.onnx", seed)
    int8_path = work / "model.int8.onnx"
    quantize_int8(
        work / "model.fp32.onnx", int8_path, normalise(to_float(crops(64, seed)), Normalisation()).numpy()
    )

    int8 = Int8Variant(
        file=int8_path.name,
        sha256=sha256_file(int8_path),
        bytes=int8_path.stat().st_size,
        test_mae=6.0 + int8_mae_loss,
        test_cs5=0.5,
        coverage90_calibrated=0.9,
    )
    return register(
        onnx_path,
        store,
        "agelens-student",
        version,
        AlignmentSpec(),
        Normalisation(),
        Metrics(n=100, mae=6.0, cs5=0.5),
        temperature=0.8,
        parameters=451_045,
        split_sha256="",
        training_data="none: a test model",
        notes={},
        card="# test model\nnon-commercial\n",
        int8=(int8_path, int8),
    )


@pytest.fixture(scope="session")
def test_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store of two versions built here: 1.0.0, whose int8 file is as accurate as its
    float file, and 1.1.0, whose int8 file is not."""
    store = tmp_path_factory.mktemp("store") / "model_store"
    register_test_model(store, "1.0.0", seed=1, int8_mae_loss=0.01)
    register_test_model(store, "1.1.0", seed=2, int8_mae_loss=0.5)
    return store

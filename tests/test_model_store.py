"""The model store: integrity, version resolution, variants, and the served model on real faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agelens.age_model import INT8_MAX_MAE_LOSS, AgeModel
from agelens.ages import expected_age, softmax
from agelens.faces import FaceDetector, find_faces
from agelens.manifest import ModelManifest, sha256_file
from agelens.model_store import ModelNotFoundError, available_versions, is_prerelease, resolve_model_dir
from tests.conftest import REPO, face_rgb, faces_in_test_split, needs_dataset

STORE = REPO / "model_store"
NAME = "agelens-student"


def test_every_shipped_version_matches_its_manifest() -> None:
    versions = available_versions(STORE, NAME)
    assert versions, "the store ships a model"
    for v in versions:
        d = STORE / NAME / v
        m = ModelManifest.load(d / "manifest.json")
        assert m.sha256 == sha256_file(d / m.file)
        assert m.ages == list(range(101)) and m.alignment.crop_size <= 112
        assert m.parameters is not None and m.parameters <= 500_000
        assert m.metrics is not None and m.metrics.n > 4000
        assert m.int8 is not None and m.int8.sha256 == sha256_file(d / m.int8.file)
        assert m.int8.bytes == (d / m.int8.file).stat().st_size
        assert (d / "MODEL_CARD.md").read_text().count("non-commercial") >= 1


def test_the_store_keeps_the_served_release_the_one_before_and_warm_starts_only() -> None:
    """Beyond the served release and the one before, a release stays only while a training
    config starts from it; pre-releases (opt-in candidates) may be kept beside them."""
    releases = [v for v in available_versions(STORE, NAME) if not is_prerelease(v)]
    configs = " ".join(p.read_text() for p in (REPO / "training" / "configs").glob("*.toml"))
    warm_starts = {v for v in releases if f"model_store/{NAME}/{v}/" in configs}
    assert set(releases) - set(releases[-2:]) <= warm_starts, "a release no config or user needs"


def test_served_model_meets_the_size_and_parameter_budget() -> None:
    """The newest version (what the service serves by default) fits the phone budget."""
    d = resolve_model_dir(STORE, NAME, "latest")
    m = ModelManifest.load(d / "manifest.json")
    assert (d / m.file).stat().st_size <= 1_000_000
    assert m.parameters is not None and m.parameters <= 500_000


def test_latest_and_pinned_versions(test_store: Path, tmp_path: Path) -> None:
    assert available_versions(test_store, NAME) == ["1.0.0", "1.1.0"]
    assert resolve_model_dir(test_store, NAME, "latest").name == "1.1.0"
    assert resolve_model_dir(test_store, NAME, "1.0.0").name == "1.0.0"
    with pytest.raises(ModelNotFoundError, match="no version"):
        resolve_model_dir(test_store, NAME, "9.9.9")
    with pytest.raises(ModelNotFoundError, match="no versions"):
        resolve_model_dir(tmp_path, NAME, "latest")


def test_a_prerelease_is_served_only_when_named(test_store: Path, tmp_path: Path) -> None:
    import shutil

    store = tmp_path / "store"
    shutil.copytree(test_store, store)
    shutil.copytree(store / NAME / "1.1.0", store / NAME / "2.0.0-rc.1")
    shutil.copytree(store / NAME / "1.1.0", store / NAME / "1.10.0")
    assert available_versions(store, NAME) == ["1.0.0", "1.1.0", "1.10.0", "2.0.0-rc.1"]
    assert resolve_model_dir(store, NAME, "latest").name == "1.10.0"
    assert resolve_model_dir(store, NAME, "2.0.0-rc.1").name == "2.0.0-rc.1"
    shutil.copytree(store / NAME / "1.1.0", store / NAME / "2.0.0")
    assert available_versions(store, NAME)[-2:] == ["2.0.0-rc.1", "2.0.0"]
    assert resolve_model_dir(store, NAME, "latest").name == "2.0.0"


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_tampered_model_is_refused(test_store: Path, tmp_path: Path, variant: str) -> None:
    src = test_store / NAME / "1.0.0"
    dst = tmp_path / NAME / "1.0.0"
    dst.mkdir(parents=True)
    for f in src.iterdir():
        dst.joinpath(f.name).write_bytes(f.read_bytes())
    model = AgeModel(dst, variant)  # type: ignore[arg-type]
    data = bytearray(model.path.read_bytes())
    data[-10] ^= 0xFF
    model.path.write_bytes(bytes(data))
    with pytest.raises(ModelNotFoundError, match="sha256"):
        model.prepare()


def test_a_manifest_with_a_malformed_int8_entry_is_refused(test_store: Path) -> None:
    text = (test_store / NAME / "1.0.0" / "manifest.json").read_text()
    manifest = ModelManifest.model_validate_json(text)
    assert manifest.int8 is not None
    with pytest.raises(ValueError, match="sha256"):
        ModelManifest.model_validate_json(text.replace(manifest.int8.sha256, "None"))


def test_auto_variant_serves_int8_only_where_it_is_as_accurate(test_store: Path) -> None:
    assert AgeModel(test_store / NAME / "1.0.0").variant == "int8"  # 0.01 worse
    assert AgeModel(test_store / NAME / "1.1.0").variant == "fp32"  # 0.5 worse
    assert AgeModel(test_store / NAME / "1.1.0", "int8").variant == "int8"  # an explicit choice stands
    assert INT8_MAX_MAE_LOSS == 0.05


def test_int8_agrees_with_fp32(test_store: Path) -> None:
    fp32, int8 = AgeModel(test_store / NAME / "1.0.0", "fp32"), AgeModel(test_store / NAME / "1.0.0", "int8")
    fp32.prepare()
    int8.prepare()
    crops = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    p32, p8 = fp32.get(crops).probabilities, int8.get(crops).probabilities
    assert np.abs(p32 - p8).max() < 0.05


def test_the_age_is_the_expectation_at_the_manifests_estimate_temperature(test_store: Path) -> None:
    """With estimate temperature 1 the age is the mean of the raw softmax; with the calibrated
    one, the mean of the distribution the service returns."""
    model = AgeModel(test_store / NAME / "1.0.0", "fp32")
    model.prepare()
    assert model.manifest.estimate_temperature == 1.0 and model.manifest.temperature == 0.8
    crops = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    raw = model.logits(crops)
    ages = np.arange(101)
    pred = model.get(crops)
    assert np.allclose(pred.age, expected_age(softmax(raw), ages), atol=1e-4)
    assert np.allclose(pred.probabilities, softmax(raw, 0.8), atol=1e-6)

    model.manifest.estimate_temperature = model.manifest.temperature
    pred = model.get(crops)
    assert np.allclose(pred.age, pred.probabilities @ ages, atol=1e-3)
    assert not np.allclose(pred.age, expected_age(softmax(raw), ages), atol=0.01)


@needs_dataset
@pytest.mark.parametrize("version", available_versions(STORE, NAME))
def test_shipped_models_on_real_faces(version: str) -> None:
    """Through the service's face path: fp32 is accurate, int8 agrees with fp32."""
    d = STORE / NAME / version
    fp32 = AgeModel(d, "fp32")
    fp32.prepare()
    detector = FaceDetector(fp32.manifest.detector)
    faces = faces_in_test_split(0, 100, 4000)[::100]  # 40 faces spread over the split
    crops, ages = [], []
    for path, age in faces:
        found = find_faces(face_rgb(path), fp32.manifest.alignment, detector, max_faces=1)
        assert len(found.faces) == 1
        crops.append(found.faces[0].crop)
        ages.append(age)
    batch = np.stack(crops)
    pred = fp32.get(batch)
    mae = float(np.abs(pred.age - np.minimum(ages, 100)).mean())
    assert mae < 8.0, f"{version}: MAE {mae:.2f} on 40 test faces"
    assert np.allclose(pred.probabilities.sum(1), 1.0, atol=1e-4)
    assert np.all((pred.low <= pred.age + 1) & (pred.age - 1 <= pred.high))
    int8 = AgeModel(d, "int8")
    int8.prepare()
    assert float(np.abs(int8.get(batch).age - pred.age).mean()) < 1.0

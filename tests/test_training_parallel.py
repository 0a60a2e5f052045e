"""Training on another machine: the device choice, the WebP-packed cache, the parallel driver and
the re-evaluation of its runs on the original crops."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO, needs_dataset
from tests.test_training_smoke import write_config
from training.cache_pack import pack, unpack
from training.device import resolve_device


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_packed_cache_round_trip(tmp_path: Path) -> None:
    # Smooth synthetic "faces" (gradients and blobs), like real crops and unlike noise, which
    # no lossy codec keeps.
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    crops = np.stack(
        [
            np.stack([xx * 3 + i, yy * 3, 128 + 60 * np.sin((xx + yy + i) / 9.0)], -1).clip(0, 255)
            for i in range(12)
        ]
    ).astype(np.uint8)
    cache = tmp_path / "cache"
    cache.mkdir()
    np.save(cache / "crops.npy", crops)
    (cache / "index.csv").write_text("row,filename,age,gender,race,split,faces_found\n")
    (cache / "alignment.json").write_text("{}")
    info = pack(cache, tmp_path / "pack")
    assert info["crops"] == 12 and info["bytes"] < crops.nbytes / 3
    assert unpack(tmp_path / "pack", tmp_path / "back") == 12
    back = np.load(tmp_path / "back" / "crops.npy")
    assert back.shape == crops.shape and back.dtype == np.uint8
    # Channel order survives (a swap would cost ~100 grey levels here), detail nearly so.
    assert np.abs(back.astype(int) - crops).mean() < 3.0
    assert (tmp_path / "back" / "index.csv").read_text() == (cache / "index.csv").read_text()


def test_a_failed_job_stops_the_others_at_once(tmp_path: Path) -> None:
    from training.parallel import run_together

    t0 = time.time()
    jobs = {
        "slow": [sys.executable, "-c", "import time; time.sleep(60)"],
        "bad": [sys.executable, "-c", "print('broken config'); raise SystemExit(3)"],
    }
    with pytest.raises(RuntimeError, match=r"bad failed \(exit 3\)[\s\S]*broken config"):
        run_together(jobs, tmp_path)
    assert time.time() - t0 < 20


def reevaluated(config: Path, out: Path) -> dict:
    """`research.earlier_runs.reevaluate` run as a user runs it; its report."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "research.earlier_runs.reevaluate",
            "--config",
            str(config),
            "--out",
            str(out),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return json.loads(out.read_text())


@needs_dataset
@pytest.mark.slow
def test_parallel_driver_and_reevaluation(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    run = [sys.executable, "-m"]
    subprocess.run(
        [*run, "agelens.cli", "train", "--config", str(cfg), "--stages", "prepare"],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    proc = subprocess.run(
        [*run, "training.parallel", "--config", str(cfg)], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rd = tmp_path / "run"
    # Phase 2 ran one process per (arm, seed) through --arms/--seeds; phase 3 collected them all.
    logs = {p.stem for p in (rd / "parallel").glob("*.log")}
    assert {"dk_teacher", "ordinal_teacher", "student", "student_dk_hint_seed1", "ablation"} <= logs
    ablation = json.loads((rd / "ablation" / "ablation.json").read_text())
    assert set(ablation["arms"]) == {"student_ce", "student_dk", "student_hint", "student_dk_hint"}
    assert all(len(arm["runs"]) == 2 for arm in ablation["arms"].values())
    effective = json.loads((rd / "config.effective.json").read_text())
    assert effective["student"]["epochs"] == 1
    report = reevaluated(cfg, tmp_path / "reeval.json")
    assert set(report["arms"]) == set(ablation["arms"])
    assert report["arms"]["student_dk"]["seeds"] == 2
    # The same checkpoint evaluated on the same crops gives the pipeline's own test MAE.
    student = json.loads((rd / "student" / "result.json").read_text())
    assert report["runs"]["student"]["test_one_pass"]["mae"] == pytest.approx(student["mae"], abs=1e-3)
    assert report["ordinal_teacher"]["test"]["chance"] == pytest.approx(1 / 12)


@needs_dataset
@pytest.mark.slow
def test_a_second_generation_reuses_a_runs_teachers(tmp_path: Path) -> None:
    """utkface_gpu_patient.toml's and utkface_gen3_swa.toml's path on the smoke data: teacher_dir
    points at a finished run, the parallel driver skips the teachers and runs each born-again
    seed (online teachers, mixup) beside the control arm, all warm-started from the first run's
    student with weight averaging; reevaluate summarises the born-again runs as an arm and
    measures the network they started from the same way."""
    (tmp_path / "first").mkdir()
    first = write_config(tmp_path / "first")
    run = [sys.executable, "-m"]
    subprocess.run(
        [*run, "agelens.cli", "train", "--config", str(first)], cwd=REPO, check=True, capture_output=True
    )
    text = first.read_text()
    second = tmp_path / "second.toml"
    text = text.replace(
        f'run_dir = "{tmp_path / "first" / "run"}"',
        f'run_dir = "{tmp_path / "second"}"\nteacher_dir = "{tmp_path / "first" / "run"}"',
    )
    init = tmp_path / "first" / "run" / "student" / "best.pt"
    text = text.replace("[student]\n", f'[student]\nmixup = 0.5\nswa = true\ninit_from = "{init}"\n')
    text = text.replace(
        "[born_again]\nenabled = true\n",
        '[born_again]\nenabled = true\nname = "patient"\nseeds = [0, 1]\n',
    )
    text = text.replace("[ablation]\nenabled = true\n", '[ablation]\nenabled = true\narms = ["student_ce"]\n')
    text = text.replace('source = "student_gen2"', 'source = "patient_seed1"')
    second.write_text(text)
    # With swa, smoke.toml's born-again EMA would be a second weight average: refused at load.
    refused = subprocess.run(
        [*run, "training.parallel", "--config", str(second)], cwd=REPO, capture_output=True, text=True
    )
    assert refused.returncode != 0 and "set [born_again] ema_decay = 0" in refused.stderr
    assert "ema_decay = 0.9\n" in text
    second.write_text(text.replace("ema_decay = 0.9\n", "ema_decay = 0.0\n"))
    proc = subprocess.run(
        [*run, "training.parallel", "--config", str(second)], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "phase 1 skipped" in proc.stdout
    rd = tmp_path / "second"
    assert not (rd / "dk_teacher").exists() and not (rd / "ordinal_teacher").exists()
    for name in ("patient_seed0", "patient_seed1"):
        history = [json.loads(line) for line in (rd / name / "history.jsonl").read_text().splitlines()]
        assert history[0]["kd"] > 0 and history[0]["hint"] > 0  # both teachers taught it, online
    ablation = json.loads((rd / "ablation" / "ablation.json").read_text())
    assert set(ablation["arms"]) == {"student_ce"} and len(ablation["arms"]["student_ce"]["runs"]) == 2
    report = reevaluated(second, tmp_path / "reeval.json")
    assert report["arms"]["patient"]["seeds"] == 2 and report["arms"]["student_ce"]["seeds"] == 2
    first_student = json.loads((tmp_path / "first" / "run" / "student" / "result.json").read_text())
    assert report["init_from"]["test_one_pass"]["mae"] == pytest.approx(first_student["mae"], abs=1e-3)
    for entry in (report["init_from"], report["runs"]["patient_seed0"]):
        assert entry["flip_calibration_temperature"] > 0
        assert {"val_flip_calibrated", "test_flip_calibrated"} <= set(entry)
    assert "mean" in report["arms"]["patient"]["test_flip_calibrated"]["mae"]
    assert report["born_again_teachers_ensemble_flip"]["test"]["mae"] > 0
    # The teachers' stages are refused for a run that reads them from another one.
    refused = subprocess.run(
        [*run, "agelens.cli", "train", "--config", str(second), "--stages", "dk_teacher"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "teacher_dir is set" in refused.stderr


def test_command_line_overrides_set_typed_values_and_refuse_unknown_keys() -> None:
    from training.config import PipelineConfig, apply_overrides

    base = PipelineConfig.load(REPO / "research/wide_teachers/configs/utkface_wide_teacher.toml")
    cfg = apply_overrides(
        base,
        [
            "dk_teacher.seed=2",
            "run_dir=runs/wide-s2",
            'born_again.teachers=["a", "../b/dk_teacher"]',
            "student.lr=1e-3",
        ],
    )
    assert cfg.dk_teacher.seed == 2 and base.dk_teacher.seed == 0
    assert cfg.run_dir == Path("runs/wide-s2")
    assert cfg.born_again.teachers == ["a", "../b/dk_teacher"]
    assert cfg.student.lr == 1e-3
    assert cfg.dk_teacher.widths == (96, 192, 256)  # untouched settings survive the round trip
    for bad in ["dk_teacher.sed=1", "nosection.seed=1", "dk_teacher.seed=many", "no-equals-sign"]:
        with pytest.raises(ValueError):
            apply_overrides(base, [bad])


def test_an_exported_soup_is_described_by_its_config_not_by_training_settings() -> None:
    from training.config import PipelineConfig
    from training.pipeline import describe_student, export_description

    soup = PipelineConfig.load(REPO / "research/weight_soup/configs/utkface_soup_3.3.0.toml")
    assert export_description(soup).startswith("Compact student: the greedy weight soup")
    assert "\n" not in export_description(soup)  # the TOML line continuations are joined
    trained = PipelineConfig.load(REPO / "research/earlier_runs/configs/utkface_gpu_patient.toml")
    assert export_description(trained) == describe_student(trained)
    assert "second generation" in export_description(trained)

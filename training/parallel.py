"""Run the pipeline's training stages as parallel processes on one machine (one GPU, or cores).

The student is small: one training step on a GPU is a few milliseconds, mostly Python and kernel
launches, so one run leaves the GPU mostly idle. The stages that do not depend on each other are
therefore run side by side, each in its own `agelens train` process on the same run_dir:

    phase 1: dk_teacher | ordinal_teacher
    phase 2: student | one process per (ablation arm, seed)
    phase 3: ablation (collects the cached per-run results into ablation.json)

With `teacher_dir` set in the config, the teachers come from that earlier run: phase 1 is
skipped, and phase 2 runs the ablation arms and one process per born-again seed (a longer or
differently taught student generation reusing a run's teachers; utkface_gpu_patient.toml).

With `--budget-s`, it first runs the same three phases for 2 epochs in `run_dir/probe` (which
also proves every code path on the device), measures the seconds per epoch of each phase, and
sets the epochs so that the real run fits the budget. The dark-knowledge teacher gets
`--teacher-ratio` times the student's epochs (the "stronger run" of the student's recipe); the
ablation arms get exactly the student's epochs, so every arm runs the shipped schedule. The
config that was run, epochs included, is written to `run_dir/config.effective.json`; passing it
to `agelens train --config` reproduces the run in one process.

    python -m training.parallel --config training/configs/utkface_gpu.toml --budget-s 420
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

from training.classifier import read_history
from training.config import PipelineConfig
from training.pipeline import born_again_runs


def say(msg: str) -> None:
    print(f"[parallel {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train_cmd(config: Path, stages: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "agelens.cli", "train", "--config", str(config), "--stages", stages, *extra]


def run_together(jobs: dict[str, list[str]], log_dir: Path) -> float:
    """Start every job and wait for all. The first failure stops the others at once (a device
    lease is short: eight runs must not go on for minutes after the ninth has failed) and
    raises with the end of the failed job's log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    running: dict[str, subprocess.Popen[bytes]] = {}
    for name, cmd in jobs.items():
        with open(log_dir / f"{name}.log", "w") as fh:  # the child keeps its own copy of the fd
            running[name] = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    while running:
        for name, proc in list(running.items()):
            rc = proc.poll()
            if rc is None:
                continue
            del running[name]
            if rc != 0:
                for other in running.values():
                    other.kill()
                    other.wait()
                tail = (log_dir / f"{name}.log").read_text().splitlines()[-30:]
                raise RuntimeError(f"{name} failed (exit {rc}); end of {name}.log:\n" + "\n".join(tail))
        time.sleep(0.5)
    return time.time() - t0


def ablation_runs(cfg: PipelineConfig) -> list[tuple[str, int]]:
    return [(arm, seed) for arm in cfg.ablation.arms for seed in cfg.ablation.seeds]


def phase2_jobs(cfg: PipelineConfig, config_path: Path) -> dict[str, list[str]]:
    """The student-sized runs, one process each; their folders are the keys."""
    jobs: dict[str, list[str]] = {}
    if cfg.teacher_dir is None:
        jobs["student"] = train_cmd(config_path, "student")
    elif cfg.born_again.enabled:
        for name, seed in born_again_runs(cfg):
            jobs[name] = train_cmd(config_path, "born_again", "--seeds", str(seed))
    if cfg.ablation.enabled:
        for arm, seed in ablation_runs(cfg):
            jobs[f"ablation/{arm}_seed{seed}"] = train_cmd(
                config_path, "ablation", "--arms", arm, "--seeds", str(seed)
            )
    return jobs


def run_phases(cfg: PipelineConfig, config_path: Path) -> dict[str, float]:
    logs = cfg.run_dir / "parallel"
    walls: dict[str, float] = {}
    if cfg.teacher_dir is None:
        say(f"phase 1: dk_teacher ({cfg.dk_teacher.epochs} ep) | ordinal_teacher ({cfg.ordinal.epochs} ep)")
        walls["phase1"] = run_together(
            {
                "dk_teacher": train_cmd(config_path, "dk_teacher"),
                "ordinal_teacher": train_cmd(config_path, "ordinal_teacher"),
            },
            logs,
        )
    else:
        say(f"phase 1 skipped: the teachers are read from {cfg.teacher_dir}")
    jobs = {Path(name).name: cmd for name, cmd in phase2_jobs(cfg, config_path).items()}
    say(f"phase 2: {len(jobs)} processes ({cfg.student.epochs} ep each): {', '.join(jobs)}")
    walls["phase2"] = run_together(jobs, logs)
    if cfg.ablation.enabled:
        say("phase 3: ablation summary")
        walls["phase3"] = run_together({"ablation": train_cmd(config_path, "ablation")}, logs)
    say("walls " + json.dumps({k: round(v, 1) for k, v in walls.items()}))
    return walls


def epoch_seconds(run: Path) -> float:
    """Seconds of a warm epoch: the last one logged (the first pays cuDNN's algorithm search)."""
    return float(read_history(run / "history.jsonl")[-1]["seconds"])


def write_config(cfg: PipelineConfig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cfg.model_dump_json(indent=2) + "\n")
    return path


def with_epochs(cfg: PipelineConfig, dk: int, ordinal: int, student: int) -> PipelineConfig:
    return cfg.model_copy(
        update={
            "dk_teacher": cfg.dk_teacher.model_copy(update={"epochs": dk}),
            "ordinal": cfg.ordinal.model_copy(update={"epochs": ordinal}),
            "student": cfg.student.model_copy(update={"epochs": student}),
            "ablation": cfg.ablation.model_copy(update={"epochs": student}),
            "born_again": cfg.born_again.model_copy(update={"epochs": student}),
        }
    )


def fit_epochs(cfg: PipelineConfig, budget_s: float, teacher_ratio: float, started: float) -> PipelineConfig:
    """Probe at 2 epochs, then choose epochs that fit what is left of the budget."""
    probe = with_epochs(cfg, 2, 2, 2).model_copy(update={"run_dir": cfg.run_dir / "probe"})
    config_path = write_config(probe, probe.run_dir / "config.effective.json")
    walls = run_phases(probe, config_path)
    teachers = cfg.teacher_dir is None
    t_dk = epoch_seconds(probe.run_dir / "dk_teacher") if teachers else 0.0
    t_ord = epoch_seconds(probe.run_dir / "ordinal_teacher") if teachers else 0.0
    # Every student-sized run gets the same epochs, so the slowest sets them.
    t_student = max(epoch_seconds(probe.run_dir / name) for name in phase2_jobs(probe, config_path))
    # What a phase costs besides its epochs (start-up, data, teacher targets, final evaluation).
    fixed = (
        (walls.get("phase1", 0.0) - 2 * max(t_dk, t_ord))
        + (walls["phase2"] - 2 * t_student)
        + walls.get("phase3", 0)
    )
    left = budget_s - (time.time() - started) - fixed
    # 10 % margin: a longer run also validates and checkpoints more often than the probe shows.
    student = max(2, math.floor(0.9 * left / (teacher_ratio * t_dk + t_student)))
    dk = max(2, round(teacher_ratio * student)) if teachers else cfg.dk_teacher.epochs
    ordinal = max(2, math.floor(dk * t_dk / t_ord)) if teachers else cfg.ordinal.epochs
    say(
        f"probe: s/epoch dk {t_dk:.2f}, ordinal {t_ord:.2f}, "
        f"student (worst of {len(phase2_jobs(probe, config_path))}) {t_student:.2f}; fixed {fixed:.0f} s; "
        f"{left:.0f} s left -> epochs dk {dk}, ordinal {ordinal}, student {student}"
    )
    return with_epochs(cfg, dk, ordinal, student)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument(
        "--budget-s", type=float, default=0.0, help="fit the epochs to this many seconds (0: as configured)"
    )
    ap.add_argument("--teacher-ratio", type=float, default=1.5)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as for agelens train")
    args = ap.parse_args()
    t0 = time.time()
    # The children read config.effective.json, so the overrides reach every process.
    cfg = PipelineConfig.load(args.config, args.set)
    if args.budget_s:
        cfg = fit_epochs(cfg, args.budget_s, args.teacher_ratio, t0)
    config_path = write_config(cfg, cfg.run_dir / "config.effective.json")
    run_phases(cfg, config_path)
    first = next(iter(phase2_jobs(cfg, config_path)))
    summary = {
        "seconds": round(time.time() - t0, 1),
        "epochs": {
            "dk_teacher": cfg.dk_teacher.epochs,
            "ordinal": cfg.ordinal.epochs,
            "student": cfg.student.epochs,
            "ablation": cfg.ablation.epochs,
            "born_again": cfg.born_again.epochs,
        },
        "teacher_dir": str(cfg.teacher_dir) if cfg.teacher_dir else None,
        f"{Path(first).name}_epoch_seconds_median": statistics.median(
            r["seconds"] for r in read_history(cfg.run_dir / first / "history.jsonl")
        ),
    }
    (cfg.run_dir / "parallel" / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    say(f"done in {summary['seconds']:.0f} s")


if __name__ == "__main__":
    main()

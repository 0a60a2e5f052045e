"""`agelens` command line: serve, estimate, prepare, train, evaluate, export.

Each subcommand imports its stack lazily, so `agelens estimate` works with only the client extra.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def _setup_logging() -> None:
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ chatter
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_serve(args: argparse.Namespace) -> int:
    from service.server import serve

    if args.model_version:
        os.environ["AGELENS_MODEL_VERSION"] = args.model_version
    return serve(args.host, args.port, args.workers)


def _face_rows(result: object) -> list[str]:
    from agelens.schemas import EstimateResponse

    assert isinstance(result, EstimateResponse)
    rows = []
    for i, f in enumerate(result.faces):
        b = f.box
        rows.append(
            f"{i:>4}  {b.x:>7.0f} {b.y:>7.0f} {b.width:>6.0f} {b.height:>6.0f}  {f.score:>5.2f}  "
            f"{f.age:>6.1f}  {f.age_std:>5.1f}  {f.age_interval.low:>4.0f}-{f.age_interval.high:<4.0f}  "
            + ("usable" if f.quality.usable else "poor: " + ", ".join(f.quality.reasons))
        )
    return rows


def cmd_estimate(args: argparse.Namespace) -> int:
    from agelens.client import AgelensClient, AgelensError

    code = 0
    with AgelensClient(args.url, api_key=args.api_key or os.environ.get("AGELENS_API_KEY")) as client:
        for path in args.images:
            try:
                result = client.estimate(
                    path, distribution=args.json and not args.no_distribution, usable_only=args.usable_only
                )
            except (AgelensError, OSError) as exc:
                print(f"{path}: error: {exc}", file=sys.stderr)
                code = 1
                continue
            if args.json:
                print(json.dumps({"file": str(path), **result.model_dump(exclude_none=True)}))
                continue
            print(
                f"{path}: {result.image_width}x{result.image_height}, {len(result.faces)} face(s), "
                f"model {result.model.name} {result.model.version}, {result.timings.total_ms:.0f} ms"
                + (
                    f", {result.faces_unusable_omitted} unusable face(s) left out"
                    if result.faces_unusable_omitted
                    else ""
                )
            )
            if result.faces:
                print("face        x       y  width height  score     age    std   90% interval  quality")
                print("\n".join(_face_rows(result)))
    return code


def cmd_batch(args: argparse.Namespace) -> int:
    try:
        from service.bulk.job import run_job
        from service.settings import Settings
    except ImportError as exc:
        print(f"agelens batch needs the batch extra: pip install '.[batch]' ({exc})", file=sys.stderr)
        return 2
    overrides = {"model_version": args.model_version, "model_variant": args.variant}
    # One ONNX Runtime and OpenCV thread per worker process: the processes are the parallelism.
    settings = Settings(**{k: v for k, v in overrides.items() if v}, ort_threads=1, opencv_threads=1)
    out = Path(args.out)
    try:
        summary = run_job(
            args.inputs,
            out,
            settings,
            args.engine,
            args.workers,
            args.batch_size,
            args.address,
            not args.quiet,
        )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: {out} holds every finished batch; run the same command to resume",
            file=sys.stderr,
        )
        return 130
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{summary.processed} images in {summary.seconds:.1f} s ({summary.images_per_second:.1f} images/s): "
        f"{summary.faces} faces, {summary.errors} images without a face or unreadable"
        + (f"; {summary.skipped} already in {out}, skipped" if summary.skipped else ""),
        file=sys.stderr,
    )
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    _setup_logging()
    from agelens.manifest import AlignmentSpec
    from training.data import read_csv_manifest, utkface_records
    from training.datasets import dataset, ensure_split
    from training.prepare import build_cache

    entry = dataset(args.dataset) if args.dataset else None
    if entry is not None:
        out = Path(args.out) if args.out else entry.cache
    elif args.out:
        out = Path(args.out)
    else:
        print("--out is needed with --data or --csv", file=sys.stderr)
        return 2
    spec = AlignmentSpec(crop_size=args.crop_size, margin=args.margin)
    if entry is not None:
        records, root = ensure_split(entry), entry.root
    elif args.csv:
        records = read_csv_manifest(Path(args.csv))
        root = Path(args.csv).parent
    else:
        root = Path(args.data)
        records = utkface_records(root, Path(args.split))
    stats = build_cache(records, root, out, spec, workers=args.workers)
    print(json.dumps({k: v for k, v in stats.items() if k != "missed"}, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    _setup_logging()
    from training.config import PipelineConfig
    from training.pipeline import STAGES, default_stages, run_pipeline, teacher_stages_refusal

    cfg = PipelineConfig.load(Path(args.config), args.set)
    if args.threads:
        cfg = cfg.model_copy(update={"threads": args.threads})
    if args.device:
        cfg = cfg.model_copy(update={"device": args.device})
    seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else None
    if args.arms or seeds:
        # A subset of the ablation in this process: several processes can then share one GPU
        # (training/parallel.py); a last run over all arms collects their cached results.
        ab = cfg.ablation.model_copy(
            update={
                **({"arms": args.arms.split(",")} if args.arms else {}),
                **({"seeds": seeds} if seeds else {}),
            }
        )
        cfg = cfg.model_copy(update={"ablation": ab})
    if seeds and cfg.born_again.enabled:
        # The same override picks the born-again seeds (one process per seed, as for the arms).
        cfg = cfg.model_copy(update={"born_again": cfg.born_again.model_copy(update={"seeds": seeds})})
    stages = args.stages.split(",") if args.stages else default_stages(cfg)
    unknown = set(stages) - set(STAGES)
    if unknown:
        print(
            f"unknown stages: {', '.join(sorted(unknown))}; choose from {', '.join(STAGES)}", file=sys.stderr
        )
        return 2
    refusal = teacher_stages_refusal(cfg, stages)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    handler = (
        logging.FileHandler(cfg.run_dir / "train.log")
        if cfg.run_dir.mkdir(parents=True, exist_ok=True) is None
        else None
    )
    if handler:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
    run_pipeline(cfg, stages)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    _setup_logging()
    from training.evaluate_onnx import (
        cached_datasets,
        evaluate_datasets,
        evaluate_on_cache,
        evaluate_on_images,
    )

    if args.data:
        report = evaluate_on_images(
            Path(args.model_dir), Path(args.data), Path(args.split_file), args.split, args.variant
        )
    elif args.cache:
        report = evaluate_on_cache(Path(args.model_dir), Path(args.cache), args.split, args.variant)
    else:
        names = args.dataset or cached_datasets()
        if not names:
            print("no dataset cache found: run `agelens prepare --dataset NAME` first", file=sys.stderr)
            return 2
        report = evaluate_datasets(Path(args.model_dir), names, args.split, args.variant)
        _print_dataset_table(report)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.data or args.cache or args.json:
        print(text)
    return 0


def _print_dataset_table(report: dict) -> None:
    """Per dataset: MAE, CS@5, coverage, then each age band's and group's MAE and signed error."""
    print(f"{report['model']} ({report['variant']}), {report['split']} split")
    for rep in report["datasets"].values():
        m = rep["metrics"]
        print(
            f"\n{rep['title']}: n {m['n']}, MAE {m['mae']:.3f}, CS@5 {m['cs5']:.3f}, "
            f"90% interval coverage {m['extra']['coverage90_calibrated']:.3f}"
        )
        rows = [("age " + b["name"], b) for b in m["bands"]]
        rows += [(f"{k} {b['name']}", b) for k, bands in rep["groups"].items() for b in bands]
        for label, b in rows:
            print(f"  {label:<22} n {b['n']:>5}  MAE {b['mae']:6.2f}  signed {b['bias']:+6.2f}")
    print(f"\nmean of the datasets' MAE: {report['mean_mae']:.3f}")


def cmd_export(args: argparse.Namespace) -> int:
    _setup_logging()
    from training.classifier import load_classifier
    from training.config import PipelineConfig
    from training.dataset import load_data
    from training.export import export_classifier

    cfg = PipelineConfig.load(Path(args.config))
    data = load_data(cfg.data.cache, cfg.data.limit_per_split)
    model = load_classifier(Path(args.checkpoint))
    dest = export_classifier(
        cfg,
        model,
        data,
        args.version,
        args.description,
        quantize=not args.no_int8,
        test_time_views=not args.no_tta,
    )
    print(dest)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agelens", description="Facial age estimation: service, client and training."
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the HTTP service (settings from AGELENS_* env vars)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("AGELENS_WORKERS", "1")),
        help="uvicorn worker processes (env AGELENS_WORKERS; one per core is fastest, see README)",
    )
    s.add_argument("--model-version", help="pin a version instead of the newest")
    s.set_defaults(func=cmd_serve)

    e = sub.add_parser("estimate", help="send images to a running service and print the faces")
    e.add_argument("images", nargs="+")
    e.add_argument("--url", default=os.environ.get("AGELENS_URL", "http://127.0.0.1:8000"))
    e.add_argument("--api-key")
    e.add_argument("--json", action="store_true", help="one JSON object per image")
    e.add_argument("--no-distribution", action="store_true", help="leave the distribution out of --json")
    e.add_argument("--usable-only", action="store_true", help="leave out faces whose quality is not usable")
    e.set_defaults(func=cmd_estimate)

    b = sub.add_parser(
        "batch",
        help="score many images in process (no HTTP): one row per face, resumable",
        description="Score files, folders (recursive) and CSV files of paths (column 'path') with the "
        "service's face path and model, without HTTP. Writes one row per face, and one row per image "
        "that is unreadable or has no face. Run it again with the same --out to resume.",
    )
    b.add_argument("inputs", nargs="+", help="image files, folders, or CSV files with a 'path' column")
    b.add_argument("--out", required=True, help="results.jsonl, results.csv or results.parquet (a folder)")
    b.add_argument("--engine", choices=["local", "ray"], default="local", help="in process, or on Ray")
    b.add_argument("--address", help="Ray cluster to join (e.g. auto); default: a local Ray instance")
    b.add_argument("--workers", type=int, default=0, help="worker processes or Ray actors (0 = one per core)")
    b.add_argument("--batch-size", type=int, default=32, help="images per batch (the unit a resume may redo)")
    b.add_argument("--model-version", help="as AGELENS_MODEL_VERSION (default: latest)")
    b.add_argument("--variant", choices=["auto", "fp32", "int8"], help="as AGELENS_MODEL_VARIANT")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_batch)

    pr = sub.add_parser("prepare", help="detect, align and cache the faces of a dataset")
    src = pr.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--dataset", help="a dataset of training/datasets.toml: its split (made if missing) and cache"
    )
    src.add_argument("--data", help="folder of images in UTKFace naming (age_gender_race_date.jpg)")
    src.add_argument("--csv", help="CSV manifest with columns path,age (see training/data.py)")
    pr.add_argument("--split", default="training/splits/utkface.csv", help="split file (made if missing)")
    pr.add_argument("--out", help="cache folder (with --dataset: the registry's, unless given)")
    pr.add_argument("--crop-size", type=int, default=64)
    pr.add_argument("--margin", type=float, default=0.0)
    pr.add_argument("--workers", type=int, default=2)
    pr.set_defaults(func=cmd_prepare)

    t = sub.add_parser("train", help="run the training pipeline from a config file (resumable)")
    t.add_argument("--config", required=True)
    t.add_argument(
        "--stages",
        help="comma-separated subset of the config's stages: prepare, dk_teacher, specialists, "
        "ordinal_teacher, student, born_again, interpolate, ablation, export",
    )
    t.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads, overriding the config (1 each runs two trainings side by side on 2 cores)",
    )
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides the config's device")
    t.add_argument("--arms", help="comma-separated ablation arms to run, overriding the config")
    t.add_argument(
        "--seeds", help="comma-separated ablation (and born-again) seeds to run, overriding the config"
    )
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set dk_teacher.seed=1 --set run_dir=runs/x (repeatable)",
    )
    t.set_defaults(func=cmd_train)

    ev = sub.add_parser(
        "evaluate", help="evaluate a model-store entry as shipped, on a cached split or on the images"
    )
    ev.add_argument("--model-dir", required=True)
    src = ev.add_mutually_exclusive_group()
    src.add_argument(
        "--dataset",
        action="append",
        help="a dataset of training/datasets.toml, on its cache (repeatable; default: every one prepared)",
    )
    src.add_argument("--cache", help="a crop cache built by `agelens prepare`, on its own")
    src.add_argument("--data", help="image folder: every image through the service's face path instead")
    ev.add_argument("--split-file", default="training/splits/utkface.csv", help="split file for --data")
    ev.add_argument("--split", default="test", choices=["train", "val", "test"])
    ev.add_argument("--variant", default="fp32", choices=["fp32", "int8"])
    ev.add_argument("--out", help="write the JSON report here")
    ev.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    ev.set_defaults(func=cmd_evaluate)

    ex = sub.add_parser("export", help="export a checkpoint to ONNX and register it in the model store")
    ex.add_argument("--config", required=True)
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--version", required=True)
    ex.add_argument("--description", default="Compact student")
    ex.add_argument("--no-int8", action="store_true")
    ex.add_argument(
        "--no-tta", action="store_true", help="export one pass, without the in-graph views (mirror, shifts)"
    )
    ex.set_defaults(func=cmd_export)

    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

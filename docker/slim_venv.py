"""Remove from the service's virtualenv what the service never loads; print what each step saves.

Runs in the Dockerfile's build stage, after every package is installed. Each entry is something
the running service provably does not touch: the container smoke test in CI (`.ci/docker-smoke.sh`)
imports everything and answers a real photo with the slimmed image. See docker/README.md.

    python docker/slim_venv.py /opt/venv
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def size_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main(venv: Path) -> None:
    site = next(venv.glob("lib/python3*/site-packages"))
    groups: dict[str, list[Path]] = {
        # MediaPipe: the image detects with BlazeFace on LiteRT (agelens.blazeface), which needs
        # only the two face-detection .tflite files of the pinned mediapipe wheel. Its graph
        # runtime (_framework_bindings.so, tasks, the other solutions and their models) is the
        # reference backend that tests compare against, not something the service loads. What
        # stays: the package's __init__.py (so importlib finds the files) and those two models.
        "mediapipe other than its BlazeFace model files": [
            p for p in (site / "mediapipe").iterdir() if p.name not in ("__init__.py", "modules")
        ]
        + [p for p in (site / "mediapipe" / "modules").iterdir() if p.name != "face_detection"]
        + [p for p in (site / "mediapipe" / "modules" / "face_detection").iterdir() if p.suffix != ".tflite"],
        # OpenCV's Haar cascades (we detect with BlazeFace).
        "cv2/data": [site / "cv2" / "data"],
        # onnxruntime's offline tooling: quantisation, transformer optimisers, converters.
        "onnxruntime tooling": [
            site / "onnxruntime" / name for name in ("transformers", "quantization", "tools", "datasets")
        ],
        # onnxruntime's C-API library: the Python binding links onnxruntime statically (its
        # NEEDED entries, `readelf -d`, name only libc, libstdc++ and friends) and never loads it.
        "onnxruntime C-API library": list((site / "onnxruntime" / "capi").glob("libonnxruntime.so*")),
        # LiteRT: the service uses only its TFLite Interpreter (_pywrap_litert_interpreter_wrapper
        # + libpywrap_litert_common.so). The WebGPU accelerator, the CompiledModel runtime
        # library, NPU vendor plugins, AOT compilation and the model tools are never loaded.
        "ai_edge_litert accelerators, NPU vendors and tools": [
            site / "ai_edge_litert" / name
            for name in ("libLiteRtWebGpuAccelerator.so", "libLiteRt.so", "vendors", "aot", "tools")
        ],
        # Packages' own test suites.
        "tests folders": [p for p in site.rglob("tests") if p.is_dir()],
    }
    total = 0.0
    for label, paths in groups.items():
        mb = 0.0
        for p in paths:
            if p.exists():
                mb += size_mb(p)
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        total += mb
        print(f"slim: {label}: {mb:.1f} MB", file=sys.stderr)
    print(f"slim: removed {total:.1f} MB from {site}", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]))

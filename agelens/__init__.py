"""agelens: facial age estimation.

The package root stays import-light on purpose: the client needs only httpx and pydantic, so
heavy modules (mediapipe, numpy, onnxruntime, torch) are imported by the submodules that use them.
"""

__version__ = "0.1.0"

"""The HTTP service: FastAPI + onnxruntime on CPU. Never imports torch."""

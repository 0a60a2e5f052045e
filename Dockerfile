# agelens service image: CPU, onnxruntime, MediaPipe BlazeFace on LiteRT; no torch, no build tools in the final stage.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# binutils only for `strip` below; the build stage is thrown away, so its apt lists are too.
# hadolint ignore=DL3008,DL3009
RUN apt-get update -q && apt-get install -y -q --no-install-recommends binutils
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY docker/requirements-service.txt /tmp/requirements.txt
# The service detects faces with MediaPipe's BlazeFace model files on the LiteRT interpreter
# (agelens.blazeface). mediapipe is installed only for those two files, without its declared
# dependencies (jax, matplotlib, OpenCV contrib, ...), and slim_venv.py removes the rest of it;
# ai-edge-litert needs only numpy at run time (its own dependencies serve its converter and AOT
# tools). docker/README.md has the measured saving of each step.
RUN python -m pip install -r /tmp/requirements.txt \
 && python -m pip install --no-deps mediapipe==0.10.21 "ai-edge-litert>=2.1,<3"
COPY pyproject.toml README.md ./
COPY agelens ./agelens
COPY service ./service
COPY docker/slim_venv.py /tmp/slim_venv.py
# Then: debug symbols stripped from the native libraries (some wheels ship them), and pip and
# setuptools out of the runtime venv, since nothing installs packages in the final image.
RUN python -m pip install --no-deps . \
 && python /tmp/slim_venv.py /opt/venv \
 && find /opt/venv -name "*.so*" -type f -exec strip --strip-unneeded {} + \
 && python -m pip uninstall -y -q pip setuptools

FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GLOG_minloglevel=2 \
    MALLOC_ARENA_MAX=2 \
    AGELENS_MODEL_STORE=/models
RUN useradd --create-home --uid 10001 agelens
COPY --from=build /opt/venv /opt/venv
COPY model_store /models
USER 10001
WORKDIR /home/agelens
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=2).status == 200 else 1)"]
CMD ["agelens", "serve", "--host", "0.0.0.0", "--port", "8000"]

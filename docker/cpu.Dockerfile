# syntax=docker/dockerfile:1
# The CPU server: the runtime (numpy + onnxruntime, no torch) and the serve extra (FastAPI, uvicorn, PyAV).
#   docker build -f docker/cpu.Dockerfile -t sambert-deploy:cpu .
#   docker run --rm -p 8000:8000 -v "$PWD/bundle:/bundle:ro" sambert-deploy:cpu
# Options after the image name go to `sambert-deploy serve` (they replace CMD): e.g. --max-concurrent 4
# --api-key-file /run/secrets/keys. --build-arg EXTRAS=serve,ui adds the Gradio page at /ui (its streamed
# player also needs the ffmpeg program, which slim lacks: add it in an image built FROM this one).
ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
ARG EXTRAS=serve
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest out of the context).
COPY pyproject.toml README.md ./
COPY sambert_deploy ./sambert_deploy
# Wheels for the package and every dependency, so the runtime stage installs offline and keeps no build tools.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[${EXTRAS}]"

FROM python:${PYTHON_VERSION}-slim
ARG EXTRAS=serve
# XDG_CACHE_HOME: onnxruntime keeps a telemetry id under ~/.cache and warns at every session it cannot;
# /tmp stays writable when the root file system is read-only (compose.yaml).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    XDG_CACHE_HOME=/tmp/.cache
# DL3013 (pin versions in pip): the wheels the build stage resolved are the pins; --no-index installs
# exactly those and nothing from an index.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels "sambert-deploy[${EXTRAS}]" \
    && groupadd --gid 10001 sambert \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin sambert
# Numeric, so a runtime that enforces runAsNonRoot (Kubernetes) can tell it is not root.
USER 10001:10001
WORKDIR /home/sambert
EXPOSE 8000
# slim has no curl: Python's urllib. /health answers 503 while draining, which urlopen raises on.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
# Mount the exported bundle read-only at /bundle. Reachable from other machines: pass an API key.
ENTRYPOINT ["sambert-deploy", "serve", "/bundle", "--host", "0.0.0.0"]
CMD ["--port", "8000"]

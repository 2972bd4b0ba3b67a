# syntax=docker/dockerfile:1
# The GPU server: CUDA 13 + cuDNN 9 runtime (host driver 580 or newer), onnxruntime-gpu in place of
# onnxruntime, the serve extra. Needs the NVIDIA Container Toolkit on the host.
#   docker build -f docker/gpu.Dockerfile -t sambert-deploy:gpu .
#   docker run --rm --gpus all -p 8000:8000 -v "$PWD/bundle:/bundle:ro" sambert-deploy:gpu
# `sambert-deploy info` inside the container says what `auto` opens (CUDA EP, or the CPU and why).
# TensorRT engines need TensorRT in the image as well (tensorrt-cu13 from NVIDIA's index): not included.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE}
ARG EXTRAS=serve
# The CUDA 13 build on PyPI (the version the project's GPU run measured, README "The GPU run").
ARG ORT_GPU=onnxruntime-gpu==1.31.1
# XDG_CACHE_HOME: onnxruntime keeps a telemetry id under ~/.cache and warns at every session it cannot;
# /tmp stays writable when the root file system is read-only (compose.yaml).
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    XDG_CACHE_HOME=/tmp/.cache
# DL3008 (pin apt versions): the base image's tag fixes the Ubuntu release; pinned package versions
# disappear from the archive with each security update and would break the build instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sambert_deploy ./sambert_deploy
# The package requires `onnxruntime` by name, which onnxruntime-gpu does not provide: install, then swap
# the CPU wheel for the GPU one (both own the same `onnxruntime` module folder, so the GPU wheel is
# reinstalled last, whole).
# DL3013 (pin versions in pip): onnxruntime-gpu is pinned by ORT_GPU; the project installs from this tree.
# hadolint ignore=DL3013
RUN pip install ".[${EXTRAS}]" \
    && pip uninstall -y onnxruntime \
    && pip install --force-reinstall --no-deps "${ORT_GPU}" \
    && rm -rf /src \
    && groupadd --gid 10001 sambert \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin sambert
# Numeric, so a runtime that enforces runAsNonRoot (Kubernetes) can tell it is not root.
USER 10001:10001
WORKDIR /home/sambert
EXPOSE 8000
# /health answers 503 while draining, which urlopen raises on; no curl needed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
# Mount the exported bundle read-only at /bundle. Reachable from other machines: pass an API key.
ENTRYPOINT ["sambert-deploy", "serve", "/bundle", "--host", "0.0.0.0"]
CMD ["--port", "8000"]

# Targets: `gateway` (FastAPI, no torch) and `worker` (torch + onnxruntime-gpu, runs on CUDA or CPU).
# Python slim, not nvidia/cuda: torch 2.14.1's and onnxruntime-gpu's CUDA 13 wheels bundle CUDA and cuDNN.
FROM python:3.11.14-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    GLIMPSE_MODEL_REPOSITORY=/app/models
RUN python -m venv /opt/venv \
    && groupadd --system --gid 10001 glimpse \
    && useradd --system --uid 10001 --gid glimpse --create-home glimpse
WORKDIR /app
# The project's metadata alone installs every dependency (no packages are found yet), so that
# layer stays cached while only the code changes; `--no-deps` then installs the code itself.
COPY pyproject.toml README.md ./

FROM base AS gateway
RUN pip install --no-cache-dir .
# The client, for `glimpse explain …` and the other client commands inside the image.
COPY client/ client/
RUN pip install --no-cache-dir ./client
COPY schemas/ schemas/
COPY service/ service/
RUN pip install --no-cache-dir --no-deps --force-reinstall .
USER 10001:10001
# Four gateway processes share the port: one slow request never holds up the others.
ENV GLIMPSE_HOST=0.0.0.0 \
    GLIMPSE_PORT=8000 \
    GLIMPSE_GATEWAY_PROCESSES=4
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['GLIMPSE_PORT'], timeout=4)"]
CMD ["glimpse", "serve"]

FROM base AS worker
# "./[gpu]" rather than ".[gpu]": the same install, and hadolint reads it as a local path.
RUN pip install --no-cache-dir "./[gpu]"
COPY schemas/ schemas/
COPY workers/ workers/
RUN pip install --no-cache-dir --no-deps --force-reinstall .
COPY models/ models/
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["glimpse-worker", "--healthcheck"]
CMD ["glimpse-worker"]

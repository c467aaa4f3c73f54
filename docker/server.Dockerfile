# scribbleflow server: REST API (uvicorn) with the CPU build of torch. In distributed mode
# (SCRIBBLEFLOW_BROKER_URL set) training runs on the workers; the server still predicts.
# Build from the repository root:  docker build -f docker/server.Dockerfile -t scribbleflow-server .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the CPU index, so that no dependency can pull a CUDA build.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==2.13.0"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY learner ./learner
COPY registration ./registration
COPY clients ./clients
RUN pip install .

FROM ${PYTHON_IMAGE}
# The wheels bring their own OpenMP runtime: no system package is needed.
RUN groupadd --system --gid 10001 scribbleflow \
    && useradd --system --uid 10001 --gid scribbleflow --home-dir /data --shell /usr/sbin/nologin scribbleflow \
    && mkdir -p /data && chown scribbleflow:scribbleflow /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SCRIBBLEFLOW_DATA_DIR=/data \
    SCRIBBLEFLOW_HOST=0.0.0.0 \
    SCRIBBLEFLOW_PORT=8000
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ['SCRIBBLEFLOW_PORT'], timeout=8)"]
CMD ["scribbleflow", "serve"]

# plmserve, CPU image: the API server, and the same image for Ray head / worker nodes.
# Not built in this repository's CI (no Docker engine there); see docs/deploy.md.
#
#   docker build -t plmserve:cpu .
#   docker run -p 8000:8000 -v $HOME/plm-models:/models -e PLMSERVE_API_KEYS='["change-me"]' \
#       plmserve:cpu serve --host 0.0.0.0 --model-dir /models
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    PLMSERVE_DATA_DIR=/data PLMSERVE_MODEL_DIR=/models HF_HOME=/models/hf

# the CPU wheel of torch first (a plain 'pip install torch' pulls GBs of CUDA packages)
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.4"

WORKDIR /opt/plmserve
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[postgres,ray]"

RUN useradd --create-home --uid 1000 plm && mkdir -p /data /models && chown plm /data /models
USER plm
VOLUME ["/data", "/models"]
EXPOSE 8000
ENTRYPOINT ["plmserve"]
CMD ["serve", "--host", "0.0.0.0"]

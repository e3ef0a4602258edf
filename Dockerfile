# pacs-vlm images, installed from uv.lock (the same pins as `make test`), never editable.
#   edge   (default): listener, api, migrate (`db upgrade`), delivery worker, worker-vllm; no torch.
#   worker: the in-process GPU worker: edge + the `models` extra with torch's CUDA build (`gpu` extra).
# docker-compose.yml picks the target and the command.

# ---- build: the wheel and the locked requirements of each image ----
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 UV_PYTHON_DOWNLOADS=never UV_NO_CACHE=1
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
# uv at the version pyproject.toml requires ([tool.uv] required-version).
RUN pip install "uv$(sed -n 's/^required-version = "\(.*\)"/\1/p' pyproject.toml)"
COPY integration ./integration
COPY worker ./worker
COPY models ./models
# --frozen: the lock as committed, never re-resolved (the test suite checks that it matches pyproject.toml).
RUN mkdir /dist \
    && uv build --wheel --out-dir /dist \
    && uv export --quiet --frozen --no-emit-project --no-header -o /dist/edge.txt \
    && uv export --quiet --frozen --no-emit-project --no-header --extra models --extra gpu -o /dist/worker.txt

# ---- edge: every process but the in-process model worker ----
FROM python:3.11-slim AS edge
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PACSVLM_DATA_DIR=/var/lib/pacs-vlm

# dcmtk: storescu/echoscu/dsrdump for the administrator's checks inside the container.
# tesseract-ocr (with its English data): burned-in text in images bound for a model server outside the trust
# boundary (worker-vllm here; the worker image inherits it).
RUN apt-get update \
    && apt-get install -y --no-install-recommends dcmtk tesseract-ocr tesseract-ocr-eng \
    && rm -rf /var/lib/apt/lists/*

# Hash-checked, no dependency resolution: exactly the versions in uv.lock, then the wheel without deps.
# pip check, less the one conflict the lock overrides on purpose (medspacy's spacy<3.8 on Python 3.11: pyproject.toml).
COPY --from=build /dist /tmp/dist
RUN pip install --require-hashes --no-deps -r /tmp/dist/edge.txt \
    && pip install --no-deps /tmp/dist/pacs_vlm-*.whl \
    && ! (pip check || true) | grep -v "but you have spacy " | grep .

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/pacs-vlm --no-create-home pacsvlm \
    && mkdir -p /var/lib/pacs-vlm \
    && chown pacsvlm:pacsvlm /var/lib/pacs-vlm
USER pacsvlm
WORKDIR /var/lib/pacs-vlm
VOLUME ["/var/lib/pacs-vlm"]

# 11112: DICOM (C-ECHO, C-STORE); 8000: review API, STOW-RS, /metrics, /health.
EXPOSE 11112 8000
ENTRYPOINT ["pacs-vlm"]
CMD ["--help"]

# ---- worker: the model stack on top (transformers, torch 2.13.0 CUDA build with its nvidia wheels) ----
FROM edge AS worker
USER root
RUN pip install --require-hashes --no-deps -r /tmp/dist/worker.txt \
    && ! (pip check || true) | grep -v "but you have spacy " | grep . \
    && rm -rf /tmp/dist
USER pacsvlm

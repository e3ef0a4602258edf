# pacs-vlm: one image for every process (listen, worker, api, db upgrade); docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PACSVLM_DATA_DIR=/var/lib/pacs-vlm

# dcmtk: storescu/echoscu/dsrdump for the administrator's checks inside the container.
RUN apt-get update \
    && apt-get install -y --no-install-recommends dcmtk \
    && rm -rf /var/lib/apt/lists/*

# torch first and pinned, so installing the project never pulls a different build (see Makefile).
RUN pip install torch==2.13.0

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY integration ./integration
COPY worker ./worker
COPY models ./models
COPY migrations ./migrations
# Editable on purpose: `pacs-vlm db upgrade` finds alembic.ini and migrations/ beside the packages
# (integration/store/migrate.py looks two folders above itself), which a plain wheel install lacks.
RUN pip install --editable .

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/pacs-vlm --no-create-home pacsvlm \
    && mkdir -p /var/lib/pacs-vlm \
    && chown pacsvlm:pacsvlm /var/lib/pacs-vlm
USER pacsvlm
VOLUME ["/var/lib/pacs-vlm"]

# 11112: DICOM (C-ECHO, C-STORE); 8000: review API, STOW-RS, /metrics, /health.
EXPOSE 11112 8000
ENTRYPOINT ["pacs-vlm"]
CMD ["--help"]

# syntax=docker/dockerfile:1
# The production image: the service against an external NATS (APP_NATS_URL), without the
# `embedded` extra. The build stage resolves dependencies; the runtime stage gets only the venv.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject.toml alone at the versions constraints.txt pins: this
# layer stays cached while only the source changes.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip install --requirement requirements.txt --constraint constraints.txt

# Then the project itself, without the `embedded` extra (no nats-server or Valkey binaries).
COPY README.md ./
COPY app ./app
RUN pip install --no-deps . \
    && python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    APP_HOST=0.0.0.0 \
    APP_PORT=8000 \
    APP_DATA_DIR=/var/lib/qosmesh \
    APP_LOG_FORMAT=json
RUN groupadd --system --gid 10001 qosmesh \
    && useradd --system --uid 10001 --gid qosmesh --no-create-home --shell /usr/sbin/nologin qosmesh \
    && mkdir -p /var/lib/qosmesh \
    && chown qosmesh:qosmesh /var/lib/qosmesh
COPY --from=build /opt/venv /opt/venv
WORKDIR /var/lib/qosmesh
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('APP_PORT', '8000') + '/healthz', timeout=2)"]
# Exec form: python is PID 1 and gets SIGTERM itself, so it leaves discovery and drains.
ENTRYPOINT ["python", "-m", "app"]
CMD ["serve"]

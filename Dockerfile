# syntax=docker/dockerfile:1
# PeerCrypt node image. Build: `docker build -t peercrypt .`; run a cluster
# with docker-compose.yml (README, "Containers").
ARG PYTHON_VERSION=3.12

# Stage 1: build the project's wheel and every dependency's wheel, once.
FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY peercrypt ./peercrypt
COPY actors ./actors
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Stage 2: the runtime; installs from those wheels only (no compiler, no index).
FROM python:${PYTHON_VERSION}-slim
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels peercrypt
RUN groupadd --system --gid 10001 peercrypt \
    && useradd --system --uid 10001 --gid peercrypt --home-dir /data --shell /usr/sbin/nologin peercrypt \
    && install -d -o peercrypt -g peercrypt -m 0700 /data \
    && install -d -o peercrypt -g peercrypt -m 0750 /inbox /inboxes
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/peercrypt-entrypoint
ENV PEERCRYPT_DATA_DIR=/data \
    PYTHONUNBUFFERED=1
USER peercrypt:peercrypt
WORKDIR /data
# /data: identity and control socket (one per container); /inbox: received files.
VOLUME ["/data", "/inbox"]
EXPOSE 7400
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["peercrypt", "status"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/peercrypt-entrypoint"]
CMD ["node", "--host", "0.0.0.0", "--port", "7400", "--inbox", "/inbox"]

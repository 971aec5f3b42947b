# Latigo's image: the `latigo` command, and supervisord to run the whole service.
#
#   docker build -t latigo .
#   docker run --rm -e LATIGO_DATABASE__URL=postgresql+psycopg://... \
#              -e LATIGO_MODELS__BASE_URL=http://gordo:5555 latigo
#
# The default command runs supervisord with /app/supervisord.conf: one scheduler and two
# executors, restarted when they die. With an orchestrator, run one role per container
# instead by overriding the command: `latigo scheduler`, `latigo executor`,
# `latigo db upgrade` (see docker-compose.yml).
#
# Configuration: LATIGO_<SECTION>__<KEY> environment variables, or a YAML file mounted at
# $LATIGO_CONFIG (/etc/latigo/latigo.yaml; without that file, defaults plus variables).
# The relative default database URL (sqlite:///latigo.db) lands in /var/lib/latigo:
# mount a volume there, or point LATIGO_DATABASE__URL at PostgreSQL.
#
# Stopping: supervisord gives each process up to 60 s (stopwaitsecs) to finish its work, so
# allow more before the runtime kills the container: `docker stop --time 75`.
#
# No build tools are installed: every pinned requirement ships a manylinux wheel.

FROM python:3.11.14-slim-bookworm

# unbuffered output, so log lines reach the runtime at once; no pip self-update check
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# an unprivileged user with fixed numeric ids (Kubernetes' runAsNonRoot checks the number),
# its data directory (working directory of the processes) and supervisord's run directory
RUN groupadd --system --gid 10001 latigo \
    && useradd --system --no-log-init --uid 10001 --gid latigo \
        --home-dir /var/lib/latigo --shell /usr/sbin/nologin latigo \
    && install --directory --owner=latigo --group=latigo --mode=0750 /var/lib/latigo /run/latigo

WORKDIR /app

# the pinned runtime dependencies first: this layer is rebuilt only when requirements.txt
# changes. The test tools (test_requirements.txt: pytest, hypothesis, the Kafka broker,
# ruff, mypy) stay out of the image.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY pyproject.toml README.md alembic.ini supervisord.conf ./
COPY alembic/ alembic/
COPY latigo/ latigo/
# Editable on purpose: latigo.db finds its migrations at <folder above the package>/alembic,
# i.e. /app/alembic here; a regular install would look in site-packages/alembic, which is
# the alembic library. The sources are compiled once here, since the app user cannot
# write __pycache__ under /app.
RUN pip install --no-cache-dir --no-deps --editable . \
    && python -m compileall -q latigo alembic

# Values for the %(ENV_x)s expansions in supervisord.conf: supervisord and supervisorctl
# refuse to start unless every one is set (see the top of supervisord.conf).
ENV SUPERVISOR_RUN_DIR=/run/latigo \
    SUPERVISOR_LATIGO_BIN=/usr/local/bin/latigo \
    SUPERVISOR_LATIGO_DIR=/var/lib/latigo \
    LATIGO_CONFIG=/etc/latigo/latigo.yaml

USER 10001:10001
# same directory as supervisord's programs, so `docker exec ... latigo status` sees the
# same relative paths as the service
WORKDIR /var/lib/latigo

# No EXPOSE: Latigo serves nothing; it calls Gordo, the database and the stores.
# No HEALTHCHECK: this image also runs single roles (`latigo executor`) without supervisord,
# where a supervisorctl-based check would always fail. With supervisord, check with
# `supervisorctl -c /app/supervisord.conf status` (exit status 0 when all are RUNNING).
CMD ["supervisord", "-c", "/app/supervisord.conf"]

# A light Gordo 6.0.4 server for the demo stack in docker-compose.yml.
#
# It is the local Gordo of latigo/demo/gordo.py in an image: the same exact pins
# (latigo/demo/gordo-requirements.txt, installed with --no-deps, so no TensorFlow) and the
# same import shim (latigo/demo/latigo_gordo_shim.py), so it serves the same scikit-learn
# demo models. Build context: the repository root.
#
# The models are not in the image. Build them on the host first, with Latigo's venv:
#     .venv/bin/python -m latigo.demo.gordo build
# which writes .gordo/models/<revision>/<model>/. docker-compose.yml mounts .gordo/models
# read-only at /gordo/models and sets MODEL_COLLECTION_DIR to the revision folder.
# A production Gordo (equinor/gordo) replaces this service; Latigo only needs its URL.

FROM python:3.11.14-slim-bookworm

# PYTHONPATH: gordo imports the demo models' data provider (latigo.demo.*) from /opt/gordo,
# as latigo/demo/gordo.py puts the repository root on the local Gordo's PYTHONPATH
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/opt/gordo

RUN groupadd --system --gid 10002 gordo \
    && useradd --system --no-log-init --uid 10002 --gid gordo \
        --no-create-home --shell /usr/sbin/nologin gordo

WORKDIR /opt/gordo

# --no-deps: the file pins every package gordo needs, minus TensorFlow, Keras and SciKeras
COPY latigo/demo/gordo-requirements.txt ./
RUN pip install --no-cache-dir --no-deps -r gordo-requirements.txt

# The shim answers gordo's TensorFlow/Keras imports with placeholders; a .pth file loads it
# in every interpreter (gunicorn's master and workers) before gordo is imported. The last
# command is the same import check latigo/demo/gordo.py runs on a fresh Gordo venv.
COPY latigo/demo/latigo_gordo_shim.py ./
RUN site_packages="$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    && mv latigo_gordo_shim.py "$site_packages/" \
    && echo "import latigo_gordo_shim" > "$site_packages/latigo_gordo_shim.pth" \
    && python -c "import gordo.server.server, gordo.cli.cli, gordo_core"

COPY latigo/__init__.py latigo/__init__.py
COPY latigo/demo/ latigo/demo/

USER 10002:10002
EXPOSE 5555

HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", \
         "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5555/healthcheck', timeout=4)"]

# As latigo/demo/gordo.py serves it: one gthread worker keeps every demo model loaded.
# 0.0.0.0 inside the container, so the Latigo containers reach it on the compose network.
CMD ["gunicorn", "--bind", "0.0.0.0:5555", "--workers", "1", "--worker-class", "gthread", \
     "--threads", "4", "--graceful-timeout", "5", "gordo.server.server:build_app()"]

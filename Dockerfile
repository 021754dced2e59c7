# The StreamSpace images, one per service, from this one file; the service is a build argument.
# Build from the repository root:
#   docker build --build-arg SERVICE=gateway    -t streamspace/gateway .
#   docker build --build-arg SERVICE=dispatcher -t streamspace/dispatcher .
#   docker build --build-arg SERVICE=agent      -t streamspace/agent .
# SERVICE picks the lock (requirements/$SERVICE.txt), the package (services/$SERVICE) and the last stage
# below, which holds what differs: the port, the health check's port, the command, and the gateway's
# noVNC files or the agent's state directory. Everything else is shared (docs/deploy.md, "Images").
# PYTHON_IMAGE: the base of every stage (the official image by default; scripts/base-images makes a
# local stand-in under the same name where no registry is reachable).
ARG PYTHON_IMAGE=python:3.11-slim
# gateway, dispatcher or agent; no default (an image built without it would be a guess): the build
# stage refuses anything else with a message saying so.
ARG SERVICE

# ---- build: a virtualenv holding libs/, this service and tools/, installed as wheels (not editable)
FROM ${PYTHON_IMAGE} AS build
ARG SERVICE
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN case "$SERVICE" in gateway|dispatcher|agent) ;; \
      *) echo "build with --build-arg SERVICE=gateway, dispatcher or agent (got '$SERVICE')" >&2; exit 1 ;; esac \
 && python -m venv /opt/streamspace
# pip, setuptools and wheel, then this service's third-party dependencies, from the locks (exact versions,
# checked against their hashes; scripts/lock writes them): a code change reuses these layers.
COPY requirements/build.txt requirements/${SERVICE}.txt /src/requirements/
RUN /opt/streamspace/bin/pip install --require-hashes -r /src/requirements/build.txt \
 && /opt/streamspace/bin/pip install --require-hashes -r /src/requirements/${SERVICE}.txt
# Then our units, in one pip command (the service and the operator tools depend on streamspace-common by
# name), built with the locked setuptools: nothing is fetched. The tools (streamspace-migrate,
# streamspace-admin) need nothing beyond the shared library's dependencies.
COPY libs /src/libs
COPY services/${SERVICE} /src/services/${SERVICE}
COPY tools /src/tools
RUN /opt/streamspace/bin/pip install --no-deps --no-build-isolation --no-index /src/libs /src/services/${SERVICE} /src/tools \
 && /opt/streamspace/bin/pip check

# ---- novnc: Debian's noVNC library, which the gateway's viewer page loads (NOVNC_DIR): its files only
# (the package itself would pull in websockify, numpy and nodejs, which the gateway does not need).
# Used by the gateway stage alone (BuildKit skips it for the others; the classic builder caches it).
FROM ${PYTHON_IMAGE} AS novnc
RUN mkdir /tmp/novnc && cd /tmp/novnc \
 && apt-get update -q \
 && apt-get download novnc \
 && dpkg-deb -x novnc_*.deb root \
 && test -f root/usr/share/novnc/core/rfb.js \
 && rm -rf /var/lib/apt/lists/*

# ---- runtime: the base image, the virtualenv and the migrations; no sources, no build tools
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/streamspace/bin:$PATH \
    HOST=0.0.0.0 \
    LOG_FORMAT=json \
    MIGRATIONS_DIR=/app/migrations
RUN groupadd --system --gid 10001 streamspace \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --shell /usr/sbin/nologin streamspace
COPY --from=build /opt/streamspace /opt/streamspace
# Migrations ship in every image so streamspace-migrate can run from any of them.
COPY migrations /app/migrations
WORKDIR /app
USER 10001:10001
# aiohttp's run_app turns SIGTERM into a graceful shutdown; the exec-form CMD makes the service PID 1.
STOPSIGNAL SIGTERM

# ---- the three services: what differs between their images
FROM runtime AS gateway
COPY --from=novnc /tmp/novnc/root/usr/share/novnc /usr/share/novnc
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % (os.environ.get('PORT') or '8000'), timeout=2)"]
CMD ["streamspace-gateway"]

FROM runtime AS dispatcher
EXPOSE 8090
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % (os.environ.get('PORT') or '8090'), timeout=2)"]
CMD ["streamspace-dispatcher"]

FROM runtime AS agent
# The agent's durable result journal (AGENT_STATE_DIR), owned by the service's user.
USER root
RUN install -d -o 10001 -g 10001 -m 700 /var/lib/streamspace-agent
USER 10001:10001
ENV AGENT_STATE_DIR=/var/lib/streamspace-agent
EXPOSE 8091
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % (os.environ.get('PORT') or '8091'), timeout=2)"]
CMD ["streamspace-agent"]

# ---- the image: the stage named by SERVICE
FROM ${SERVICE}

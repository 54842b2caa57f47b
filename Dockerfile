# Every image of the workspace, one target each, built from the repository root:
#
#   docker build --target processor     -t durable/processor .
#   docker build --target scheduler     -t durable/scheduler .
#   docker build --target inspector     -t durable/inspector .
#   docker build --target hello-service -t durable/hello-service .
#   docker build --target dev           -t durable/dev .       # `tilt up`: everything, reloading
#
# (`make images` builds all of them, and a NATS image, with the right arguments for this machine.)
# The processor, the inspector and the dev image carry every workflow plugin under plugins/. Your own
# plugins from a package index (pip requirement specifiers, space-separated) go in with one argument,
# resolved together with the image's packages within constraints.txt:
#
#   docker build --target processor --build-arg PLUGINS="shop-workflows==1.4.2" \
#       --build-arg PIP_EXTRA_INDEX_URL=https://pypi.example.com/simple -t shop/processor .
#
# Or put the plugin's source folder under plugins/: every plugins/*/ is built into those images.
#
# Build arguments:
#   BASE_IMAGE   the Python base (default: the official python:3.11-slim-bookworm). Any Debian or
#                Ubuntu image with python3.11, its venv module, useradd and CA certificates works.
#   PLUGINS      extra plugin requirement specifiers (processor, inspector, dev).
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST
#                where pip looks (a private index); used while building only, never in the image.
#   PIP_NO_INDEX=1
#                install only from deploy/docker/wheelhouse/ (wheels built beforehand on a machine
#                that reaches an index: how `make images` builds where containers cannot).
#
# No `# syntax=` line on purpose: the builder's own Dockerfile frontend must do, since fetching
# another one needs a registry. BuildKit is needed (DOCKER_BUILDKIT=1) for the RUN --mount lines.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# -- base: the environment every stage shares; the venv the images run from ----------------------
FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/durable \
    PATH=/opt/durable/bin:$PATH
RUN python3 -m venv "$VIRTUAL_ENV"

# -- manifests: the lock and every member's pyproject.toml, nothing else, so that the third-party
# wheels below are rebuilt when a dependency changes, not when a source file does ----------------
FROM base AS manifests
WORKDIR /context
COPY . .
RUN mkdir /manifests \
    && cp constraints.txt /manifests/ \
    && find libs services plugins proto -maxdepth 2 -name pyproject.toml \
        -exec cp --parents {} /manifests/ \;

# -- deps: wheels of every third-party package any image needs ----------------------------------
FROM base AS deps
WORKDIR /src
COPY --from=manifests /manifests/ ./
ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_TRUSTED_HOST=""
ARG PIP_NO_INDEX=""
# The third-party requirements of every member (the workspace's own, durable-*, are built below),
# setuptools to build those, and watchfiles, the dev image's reloader.
RUN python -c "import glob, tomllib; reqs = {r for p in glob.glob('*/**/pyproject.toml', recursive=True) for r in tomllib.load(open(p, 'rb'))['project'].get('dependencies', []) if not r.startswith('durable-')}; print(*sorted(reqs | {'setuptools', 'watchfiles'}), sep='\n')" \
        > requirements.txt
RUN --mount=type=bind,source=deploy/docker/wheelhouse,target=/wheelhouse \
    pip wheel --wheel-dir /wheels/deps --find-links /wheelhouse -c constraints.txt -r requirements.txt

# -- build: wheels of the workspace members, and of the extra plugins ------------------------------
FROM deps AS build
COPY libs/durable_core libs/durable_core
COPY proto proto
COPY services services
COPY plugins plugins
COPY deploy/docker/install-wheels.sh /wheels/install
RUN pip wheel --no-deps --wheel-dir /wheels/app --find-links /wheels/deps \
        ./libs/durable_core ./proto ./services/*/ ./plugins/*/ \
    && python -c "import glob, tomllib; print(*sorted(tomllib.load(open(p, 'rb'))['project']['name'] for p in glob.glob('plugins/*/pyproject.toml')), sep='\n')" \
        > /wheels/example-plugins.txt
ARG PLUGINS=""
# PLUGINS is word-split on purpose: it is a list of requirement specifiers.
RUN --mount=type=bind,source=deploy/docker/wheelhouse,target=/wheelhouse \
    mkdir -p /wheels/extra \
    && if [ -n "$PLUGINS" ]; then \
        pip wheel --wheel-dir /wheels/extra --find-links /wheelhouse --find-links /wheels/deps \
            --find-links /wheels/app -c constraints.txt $PLUGINS; \
    fi

# -- runtime: the non-root user the services run as. Each image below installs its packages with
# /wheels/install, from the build stage's wheels only: it keeps no wheel, no source, no compiler ---
FROM base AS runtime
RUN groupadd --system --gid 10001 durable \
    && useradd --system --uid 10001 --gid durable --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin durable
WORKDIR /srv/durable

# -- processor: runs the workflow invocations; every plugin installed -----------------------------
FROM runtime AS processor
ARG PLUGINS=""
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    /wheels/install durable-processor +examples $PLUGINS \
    && durable plugins
ENV DURABLE_METRICS_HOST=0.0.0.0 \
    DURABLE_METRICS_PORT=9464
EXPOSE 9464
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('DURABLE_METRICS_PORT', '9464'), timeout=4)"]
ENTRYPOINT ["python", "-m", "durable_processor"]

# -- scheduler: fires schedules and timers' back-ups, drives retries, re-drives orphaned work -----
FROM runtime AS scheduler
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    /wheels/install durable-scheduler
ENV DURABLE_METRICS_HOST=0.0.0.0 \
    DURABLE_METRICS_PORT=9465
EXPOSE 9465
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('DURABLE_METRICS_PORT', '9465'), timeout=4)"]
ENTRYPOINT ["python", "-m", "durable_scheduler"]

# -- inspector: HTTP API and web UI; decodes payloads with the installed plugins' protobufs ------
FROM runtime AS inspector
ARG PLUGINS=""
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    /wheels/install durable-inspector +examples $PLUGINS
# Listen on every interface of the container (the inspector binds 127.0.0.1 by default).
ENV DURABLE_INSPECTOR_HOST=0.0.0.0 \
    DURABLE_INSPECTOR_PORT=8080
EXPOSE 8080
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('DURABLE_INSPECTOR_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["python", "-m", "durable_inspector"]

# -- hello-service: the example gRPC service the example workflows call ---------------------------
FROM runtime AS hello-service
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    /wheels/install 'durable-hello-service[idempotency]'
ENV GRPC_HOST=0.0.0.0 \
    GRPC_PORT=9090
EXPOSE 9090
USER 10001:10001
# The standard gRPC health check of the overall server ("" service name).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, grpc; from grpc_health.v1 import health_pb2 as pb, health_pb2_grpc as rpc; reply = rpc.HealthStub(grpc.insecure_channel('127.0.0.1:' + os.environ.get('GRPC_PORT', '9090'))).Check(pb.HealthCheckRequest(), timeout=4); raise SystemExit(reply.status != pb.HealthCheckResponse.SERVING)"]
ENTRYPOINT ["python", "-m", "hello_service"]

# -- dev: for `tilt up` (cluster mode) only. Every service and plugin, installed packages owned by
# the service user so Tilt can sync changed sources into site-packages, and watchfiles, which
# restarts the service when they change (the Tiltfile gives each service its command) ------------
FROM runtime AS dev
ARG PLUGINS=""
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    /wheels/install durable-processor durable-scheduler durable-inspector \
        durable-hello-service watchfiles +examples $PLUGINS \
    && test -d "$VIRTUAL_ENV/lib/python3.11/site-packages/durable_core" \
    && chown -R 10001:10001 "$VIRTUAL_ENV/lib"
USER 10001:10001

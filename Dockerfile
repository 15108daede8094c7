# kafka-tenant-proxy: one image for every part (ktp sidecar, ktp routes serve, ktp injector serve).
#
# Build:  docker build -t ktp:0.1.0 .   (no syntax directive: BuildKit uses its built-in
#         frontend and pulls nothing, so air-gapped builders work)
# Run:    docker run --rm --read-only ktp:0.1.0 sidecar --help
#
# The final stage holds the Python runtime and a virtualenv with the package, nothing else: no
# compiler, no pip in the virtualenv, no source tree. It runs as an unprivileged numeric user
# (so Kubernetes can verify runAsNonRoot) and writes nothing to its filesystem, so it runs with
# readOnlyRootFilesystem: bytecode is compiled at build time.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/ktp
# Metadata first, so the dependency layer is rebuilt only when they change.
COPY pyproject.toml README.md image-constraints.txt ./
COPY proxy ./proxy
# Every dependency ships wheels for linux/amd64 and arm64: nothing is compiled, even here.
# image-constraints.txt pins every runtime dependency (and theirs), so two builds of one commit
# get the same libraries; pyproject.toml keeps ranges for people installing the package.
# unchecked-hash bytecode stays valid whatever the file times are after COPY --from.
RUN /opt/ktp/bin/pip install --no-cache-dir --constraint image-constraints.txt . \
    && /opt/ktp/bin/pip uninstall --yes pip setuptools \
    && /opt/ktp/bin/python -m compileall -q --invalidation-mode unchecked-hash /opt/ktp/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kafka-tenant-proxy" \
      org.opencontainers.image.description="Tenant-aware Kafka consumer sidecar, route service and sidecar injector" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/ktp/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/ktp /opt/ktp
# 65532: the conventional "nonroot" UID/GID of distroless images; no home, no shell needed.
USER 65532:65532
# admin, publish API, metrics (sidecar); route service; injector webhook.
EXPOSE 14000 14001 14090 8080 8443
ENTRYPOINT ["ktp"]
CMD ["--help"]

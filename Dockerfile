# syntax=docker/dockerfile:1
# The operator image: `modelplane run` as a non-root user (uid 10001) on a read-only root filesystem.
#
#   make image                                  # here: buildah, on a Debian base made with mmdebstrap
#   docker build -t <registry>/modelplane:0.1.0 .    # anywhere with Docker (BASE defaults below)
#
# BASE is any Debian-like image with Python >= 3.11 as `python3` (with its venv module): the
# default python:3.11-slim-bookworm, or the local Debian bookworm base of hack/image/base.sh
# (Debian's python3, 3.11.2). The build stage installs the operator distribution (operator/, not
# the developer tools) into a virtualenv; the final stage copies only that virtualenv.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
COPY operator /src/operator
# pip's cache is a build cache mount (kept between builds, not in the image). The operator takes
# only the kubernetes package's configuration loader, but `import kubernetes` imports its whole
# generated client. So: its asyncio twin goes (68 MB with bytecode; never imported), and the
# generated API and model classes (58 MB, mostly docstrings) are kept as bytecode only, compiled
# without docstrings (`-o 2`; they hold no assert): 20 MB. Their tracebacks show no source lines.
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/modelplane \
    && /opt/modelplane/bin/pip install --disable-pip-version-check /src/operator \
    && /opt/modelplane/bin/pip uninstall --yes --quiet pip setuptools \
    && kube=$(echo /opt/modelplane/lib/python3*/site-packages/kubernetes) \
    && rm -rf "$kube/aio" \
    && for generated in "$kube/client/api" "$kube/client/models"; do \
         find "$generated" -name __pycache__ -prune -exec rm -rf {} + \
         && /opt/modelplane/bin/python -m compileall -q -b -o 2 "$generated" \
         && find "$generated" -name '*.py' -delete; \
       done

FROM ${BASE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="modelplane" \
      org.opencontainers.image.description="Kubernetes operator serving open-weight models on GPUs with vLLM" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /opt/modelplane /opt/modelplane
COPY LICENSE /usr/share/doc/modelplane/LICENSE
# A named user without useradd (the minimal base has no passwd package); no home directory.
RUN echo 'modelplane:x:10001:10001:modelplane:/nonexistent:/usr/sbin/nologin' >> /etc/passwd \
    && echo 'modelplane:x:10001:' >> /etc/group
# The root filesystem is read-only at run time: no bytecode written (it was compiled at install),
# unbuffered logs.
ENV PATH=/opt/modelplane/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["modelplane"]
CMD ["run"]

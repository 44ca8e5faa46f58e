# edgeinfer: one light container per gateway. Multi-arch (amd64, arm64): every runtime
# dependency ships manylinux wheels for both, so nothing is compiled here.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY module ./module
# The package and its runtime dependencies only: no dev, tools or training extras.
RUN python -m venv /opt/edgeinfer \
 && /opt/edgeinfer/bin/pip install --no-cache-dir .

FROM python:${PYTHON_VERSION}-slim-bookworm
RUN groupadd --system --gid 10001 edgeinfer \
 && useradd --system --uid 10001 --gid edgeinfer --no-create-home \
      --home-dir /var/lib/edgeinfer --shell /usr/sbin/nologin edgeinfer \
 && install -d -o edgeinfer -g edgeinfer -m 0750 /var/lib/edgeinfer
COPY --from=build /opt/edgeinfer /opt/edgeinfer
# The sample model seeds an empty store; later models arrive over the air.
COPY models/har/onnx /opt/edgeinfer/seed/har
ENV PATH=/opt/edgeinfer/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    EDGEINFER_MODULE_STATE_DIR=/var/lib/edgeinfer \
    EDGEINFER_MODEL_PATH=/opt/edgeinfer/seed/har/model.onnx \
    EDGEINFER_HTTP_LISTEN=0.0.0.0:9108
USER 10001:10001
WORKDIR /var/lib/edgeinfer
VOLUME ["/var/lib/edgeinfer"]
EXPOSE 9108
# `docker stop` sends SIGTERM: the module answers what it took, then exits 0.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["edgeinfer", "health"]
ENTRYPOINT ["edgeinfer"]
CMD ["run"]

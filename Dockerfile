# syntax=docker/dockerfile:1
# The fleetwatch container image (helm/README.md). Build from the repository root:
#   docker build -t fleetwatch:0.1.0 .
# Not built in this repository's CI (no container engine there); scripts/test lints this
# file and checks that the runtime stage provides every library the binary links.

# --- build ------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
# librdkafka is built from source by rdkafka-sys (make, gcc) against the system OpenSSL
# and zlib; the rust image ships gcc, make, libssl-dev and zlib1g-dev already.
COPY . .
# The registry and the target dir are cache mounts: a rebuild after a source change
# reuses the compiled dependencies.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p fleetwatch \
    && install -m 0755 target/release/fleetwatch /usr/local/bin/fleetwatch

# --- runtime ----------------------------------------------------------------------------
FROM debian:bookworm-slim
# What the binary links beyond libc and libgcc (`ldd target/release/fleetwatch`):
# OpenSSL 3 (librdkafka's TLS) and zlib; CA roots for TLS to Kafka, MQTT and webhooks.
# Not pinned: bookworm's security updates of OpenSSL should reach a rebuilt image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl3 zlib1g ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A fixed non-root user (the chart's securityContext runs as 10001).
RUN groupadd --system --gid 10001 fleetwatch \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin fleetwatch
COPY --from=build /usr/local/bin/fleetwatch /usr/local/bin/fleetwatch
# Nothing is written to the image's filesystem: it runs with a read-only root.
USER 10001:10001
EXPOSE 8080 8081
# Smoke check when building: the binary starts and prints its help.
RUN ["/usr/local/bin/fleetwatch", "--help"]
ENTRYPOINT ["/usr/local/bin/fleetwatch"]
CMD ["run", "--config", "/etc/fleetwatch/fleetwatch.toml"]

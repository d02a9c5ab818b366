# syntax=docker/dockerfile:1
#
# Signet in a container: a release build, then the binary alone in a slim
# Debian image, run as a non-root user on a read-only root file system.
#
#   docker build -t signet .
#   docker run --read-only --cap-drop ALL --ulimit memlock=-1 \
#     -v signet-data:/var/lib/signet -v /run/signet:/run/signet \
#     -v /etc/signet:/etc/signet:ro -p 8080:8080 -p 127.0.0.1:9090:9090 signet
#
# Writable paths: /var/lib/signet (store, audit log, lock: a volume) and
# /run/signet (the gRPC Unix socket: a volume shared with clients, or a
# tmpfs). The configuration is /etc/signet/signet.toml (mount it; see
# deploy/container/signet.toml and docs/deploy.md).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin signet \
    && install -D -m 0755 target/release/signet /out/signet

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: PostgreSQL and PKCS#11 setups that name system CAs.
# A PKCS#11 KEK needs its module in the image: add the vendor's package
# here (or p11-kit-modules for p11-kit-client.so, to reach an HSM through
# a p11-kit server socket; see deploy/kubernetes/statefulset.yaml).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 signet \
    && useradd --system --uid 10001 --gid signet --no-create-home \
        --home-dir /var/lib/signet --shell /usr/sbin/nologin signet \
    && install -d -o signet -g signet -m 0700 /var/lib/signet \
    && install -d -o signet -g signet -m 0755 /run/signet \
    && install -d -m 0755 /etc/signet
COPY --from=build /out/signet /usr/local/bin/signet
COPY deploy/container/signet.toml /etc/signet/signet.toml

USER 10001:10001
VOLUME ["/var/lib/signet", "/run/signet"]
# JWKS and health (listen.http); /metrics and /status (listen.metrics).
EXPOSE 8080 9090
# The binary is its own probe: no curl in the image. Keep listen.http on
# port 8080 reachable on loopback (0.0.0.0:8080 is).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/signet", "health", "http://127.0.0.1:8080/readyz"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/signet", "server", "--config", "/etc/signet/signet.toml"]

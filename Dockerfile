# syntax=docker/dockerfile:1
#
# docker build -t bucketgate .
# docker run --rm --read-only --tmpfs /tmp -p 8443:8443 -p 127.0.0.1:9090:9090 \
#     -v "$PWD/config.toml:/etc/bucketgate/config.toml:ro" -v "$PWD/certs:/etc/bucketgate/certs:ro" \
#     bucketgate
#
# In a container the config must listen on 0.0.0.0 (the embedded default binds 127.0.0.1 only).
# On Kubernetes: deploy/kubernetes/ (probes on the admin listener, so no HEALTHCHECK here).
# tests/deploy.rs checks this file's stages (pinned bases, non-root user, the binary from the
# build stage, EXPOSE matching the manifests, nothing secret copied in).

# Build stage: the toolchain the crate is tested with (rustc 1.95), on the runtime's Debian.
FROM rust:1.95.0-bookworm AS build
WORKDIR /build
# Only what `cargo build --release` reads: the manifest names the bench target, so benches/ too.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin bucketgate \
    && install -m 0755 target/release/bucketgate /usr/local/bin/bucketgate

# Runtime stage: the binary, CA roots, Debian's ffmpeg (ffmpeg and ffprobe, for the /v/ video
# routes; without them those routes answer 503) and an unprivileged user; nothing else is
# written at run time but the directories below and /tmp (video jobs), so the root filesystem
# can be mounted read-only.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates ffmpeg \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 bucketgate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /srv/bucketgate --shell /usr/sbin/nologin bucketgate \
    && mkdir -p /srv/bucketgate /etc/bucketgate /var/cache/bucketgate /var/lib/bucketgate \
    && chown 10001:10001 /srv/bucketgate /var/cache/bucketgate /var/lib/bucketgate \
    && chmod 0700 /var/cache/bucketgate /var/lib/bucketgate
COPY --from=build /usr/local/bin/bucketgate /usr/local/bin/bucketgate
COPY config.toml.example /usr/share/doc/bucketgate/config.toml.example
# The config's relative paths resolve from its own directory, /etc/bucketgate, which is
# root-owned and mounted read-only above: point tls_cert/tls_key at /etc/bucketgate/certs/, or,
# for a development certificate, give an absolute writable directory such as
# dev_certificate_dir = "/srv/bucketgate/.bucketgate" (this home is the runtime user's).
# Writable for the runtime user (volumes under a read-only root): /var/cache/bucketgate and
# /var/lib/bucketgate, for a [cache] disk_dir and an [admin] state_dir below them (e.g.
# /var/cache/bucketgate/disk, /var/lib/bucketgate/state), and /srv/bucketgate.
WORKDIR /srv/bucketgate
USER 10001:10001
# The data listener (TLS) and the admin listener (plain HTTP: keep it private).
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/bucketgate"]
CMD ["serve", "--config", "/etc/bucketgate/config.toml"]

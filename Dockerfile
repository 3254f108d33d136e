# syntax=docker/dockerfile:1
# smb3-csi image: one static-ish binary (glibc + libgcc_s) on Debian slim. The SMB3 client and
# the FUSE server are in the binary itself: no cifs-utils, no fuse userspace tools.
#   docker build -t smb3-csi:dev .
# Build stage: the toolchain matches rust-version in Cargo.toml.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
COPY crates ./crates
# Registry and target caches survive between builds (BuildKit); the binary is copied out
# of the cached target dir because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin smb3-csi \
    && install -D -m 0755 target/release/smb3-csi /out/smb3-csi

FROM debian:bookworm-slim
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="smb3-csi" \
      org.opencontainers.image.description="Kubernetes CSI driver for SMB shares with a userspace SMB3 client (encryption, signing) served through FUSE" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/smb3-csi/smb3-csi"
# CA bundle for a --kubeconfig API server signed by a public CA (in-cluster config uses the
# ServiceAccount's ca.crt). Taken from the build stage so the runtime image needs no apt.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/smb3-csi /usr/local/bin/smb3-csi
# The node plugin runs privileged as root (mount(2), /dev/fuse); the chart sets the
# controller containers' securityContext.
ENTRYPOINT ["/usr/local/bin/smb3-csi"]
CMD ["--help"]

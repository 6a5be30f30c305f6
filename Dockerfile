# syntax=docker/dockerfile:1
# The one idbase image: `idbase idsvc`, `idbase gateway` and `idbase migrate`
# are the same binary with different args (see k8s/).
#
# Stages: chef (tooling) -> planner (dependency recipe) -> builder (deps,
# then our code) -> distroless runtime. The recipe only changes when a
# manifest or Cargo.lock does, so the dependency layer is reused across
# ordinary code changes.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: cached until Cargo.toml/Cargo.lock change.
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin idbase
COPY . .
# protobuf is compiled by protox (no protoc) and TLS is rustls (no OpenSSL),
# so the toolchain image needs nothing else.
RUN cargo build --release --locked --bin idbase \
    && install -D -m 0555 target/release/idbase /out/idbase

# The legacy system's emulator (e2e/src/legacy), for the kind cluster only:
# `docker build --target legacy -t idbase-legacy .`. Its own cook, so the
# idbase image's layers stay as they are.
FROM chef AS legacy-builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --package e2e --bin legacy
COPY . .
RUN cargo build --release --locked --package e2e --bin legacy \
    && install -D -m 0555 target/release/legacy /out/legacy

FROM gcr.io/distroless/cc-debian13:nonroot AS legacy
LABEL org.opencontainers.image.title="idbase-legacy" \
      org.opencontainers.image.description="Emulator of the legacy member system (e2e and kind only)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=legacy-builder /out/legacy /usr/local/bin/legacy
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/legacy"]

# glibc, libgcc, CA certificates and tzdata; no shell, no package manager.
# The last stage: a plain `docker build` builds the idbase image.
FROM gcr.io/distroless/cc-debian13:nonroot AS runtime
LABEL org.opencontainers.image.title="idbase" \
      org.opencontainers.image.description="Identity platform: idsvc, gateway and migration jobs in one binary" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/idbase /usr/local/bin/idbase
# distroless's `nonroot`, numeric so Kubernetes can verify runAsNonRoot.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/idbase"]
CMD ["--help"]

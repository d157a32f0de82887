# syntax=docker/dockerfile:1
#
# The kpromote image: one static-enough binary for every use — `kpromote controller` (the
# PromotePolicy controller, deploy/controller/), `kpromote backup` (the backup Job), and the
# operator's commands.
#
#   docker build -t ghcr.io/kosmos-io/kpromote:0.1.0 .
#
# Build stage: edition 2024, rust-version 1.89 (1.95 is what the project is tested with). Only what
# the workspace needs is copied; `-p kpromote` builds the thin binary and the model, archive and
# core crates, never the test rig (crates/testenv), whose manifest cargo only reads.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kpromote --bin kpromote \
    && install -D target/release/kpromote /out/kpromote

# Runtime stage: glibc, CA certificates, no shell, non-root (uid 65532, as deployment.yaml runs it).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/kpromote /usr/local/bin/kpromote
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kpromote"]
CMD ["controller"]

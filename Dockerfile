# syntax=docker/dockerfile:1.7
# One image, one binary for every subcommand:
#   docker run IMAGE serve | consume | migrate | loadtest
#
# Stage 1 builds the dependencies alone (a layer that changes only with
# Cargo.toml/Cargo.lock), stage 2 the project, stage 3 is a distroless,
# non-root runtime holding nothing but `svc` and the C runtime it links.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS deps
WORKDIR /build
# Manifests only, with stub sources: `cargo build` then compiles every
# dependency, and this layer is reused until a manifest changes.
COPY Cargo.toml Cargo.lock ./
COPY loadtest/Cargo.toml loadtest/Cargo.toml
RUN mkdir -p src loadtest/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs loadtest/src/lib.rs \
    && echo 'fn main() {}' > build.rs \
    && cargo build --release --locked \
    && rm -rf src loadtest/src build.rs

FROM deps AS build
COPY build.rs ./
COPY migrations migrations
COPY src src
COPY loadtest/src loadtest/src
# Touch the sources so cargo rebuilds them over the stubs' artifacts.
RUN find src loadtest/src build.rs -exec touch {} + \
    && cargo build --release --locked \
    && install -D -m 0755 target/release/svc /out/svc

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/svc /usr/local/bin/svc
# distroless's `nonroot` user (uid 65532); the filesystem can be read-only.
USER 65532:65532
EXPOSE 8000 9000
# mimalloc: commit arena memory on demand, and give freed pages back after
# 10 ms rather than a second (about 30 and 6 MiB less resident under 1,000
# connections; docs/PERFORMANCE.md).
ENV MIMALLOC_ARENA_EAGER_COMMIT=0 \
    MIMALLOC_PURGE_DELAY=10 \
    SVC_LISTEN=0.0.0.0:8000 \
    SVC_METRICS_LISTEN=0.0.0.0:9000 \
    SVC_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/svc"]
CMD ["serve"]

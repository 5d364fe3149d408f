# distillrec on the CPU, run as the host's user (README "Container").
#
#   docker build -t distillrec .                    # the runtime image (last stage)
#   docker build --target dev -t distillrec:dev .   # the development image
#   scripts/container.sh -- pipeline --config /opt/distillrec/configs/quickstart.toml --out runs/quickstart
#
# `podman build` takes the same arguments. Build arguments:
#   RUST_IMAGE  the Rust toolchain image of the build and dev stages (Debian
#               bookworm, so the binary runs on BASE_IMAGE's glibc)
#   BASE_IMAGE  the runtime base (Debian bookworm or newer)
# Nothing is downloaded at run time: model files come from a mounted
# models/ folder, or once through `distillrec model fetch` (pip, which is
# why the runtime has python3 and pip).
ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

# ---- build: the release binary
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
RUN cargo build --release --locked -p distillrec --bin distillrec \
 && install -m 0755 target/release/distillrec /usr/local/bin/distillrec

# ---- dev: the toolchain, with the project mounted at /workspace; the
# entrypoint rebuilds target/container/release/distillrec when Cargo.lock
# or a source is newer than it (DISTILLREC_DEV=1). The crates of Cargo.lock
# are fetched here, into a CARGO_HOME any user may write, so a rebuild
# needs no network unless the lock file changed.
FROM ${RUST_IMAGE} AS dev
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip tini \
 && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock /tmp/fetch/
COPY crates /tmp/fetch/crates
RUN cd /tmp/fetch && cargo fetch --locked && rm -rf /tmp/fetch \
 && chmod -R a+rwX "${CARGO_HOME:-/usr/local/cargo}"
COPY docker/entrypoint.sh /usr/local/bin/entrypoint.sh
ENV WORKSPACE=/workspace DISTILLREC_DEV=1
WORKDIR /workspace
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/entrypoint.sh"]

# ---- runtime: the binary, configs/ and scripts/ (in /opt/distillrec),
# python3 with pip for `model fetch`, and tini as PID 1 so that Ctrl-C and
# `docker stop` reach distillrec.
FROM ${BASE_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip tini ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/distillrec /usr/local/bin/distillrec
COPY configs /opt/distillrec/configs
COPY scripts /opt/distillrec/scripts
COPY docker/entrypoint.sh /usr/local/bin/entrypoint.sh
ENV WORKSPACE=/workspace
WORKDIR /workspace
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/entrypoint.sh"]

# syntax=docker/dockerfile:1
# HyperBEAM OS guest content: the HyperBEAM release and the AO compute unit,
# built on Debian trixie (rootfs.suite: the guest's own base, so the binaries link against
# the guest's glibc). hbos/content.py runs, never editing this file:
#
#   docker build -f resources/content.Dockerfile --target content \
#     --build-arg HB_REPO=... --build-arg HB_COMMIT=<40 hex> --build-arg HB_PROFILE=default \
#     --build-arg AO_REPO=... --build-arg AO_COMMIT=<40 hex> --build-arg CU_UNIT_MODE=hbu \
#     --build-arg OTP_VERSION=27 --build-arg NODE_VERSION=22 \
#     --build-arg GUEST_SUITE=<rootfs.suite> -t TAG build/content/docker-context
#
# The build context holds only config.flat (rendered from config.yaml) and
# cu-mode-check.sh: config.flat is written into HyperBEAM's source tree before
# `rebar3 release`, as hb-os does (HyperBEAM edge git-ignores `config.*`, and
# relx's overlay copies config.flat into the release).
#
# Commits are resolved on the host (git ls-remote), so a moved branch is a new
# build argument and Docker's layer cache cannot serve stale sources.
#
# Output contract (read back with docker create + docker cp):
#   /hbos/tree/   root-relative tree laid over the guest root
#                 (opt/hyperbeam = the release with its ERTS, opt/cu = servers/cu
#                 with node_modules, opt/node/bin/node = the Node runtime)
#   /hbos/refs/   one file per component holding the commit really checked out
# Units, config.flat and the CU's env are rendered on the host from config.yaml.

ARG OTP_VERSION=27
ARG NODE_VERSION=22
# The guest root's Debian suite (rootfs.suite): the build images must match it.
ARG GUEST_SUITE=trixie

FROM node:${NODE_VERSION}-${GUEST_SUITE} AS node

# ------------------------------------------------------------------ HyperBEAM
FROM erlang:${OTP_VERSION} AS hyperbeam
ARG OTP_VERSION
ARG GUEST_SUITE
ENV DEBIAN_FRONTEND=noninteractive PATH=/root/.cargo/bin:$PATH
# erlang:N is Debian-based; its ERTS goes into the guest, so its suite must be
# the guest's (else glibc may not match).
RUN . /etc/os-release && if [ "$VERSION_CODENAME" != "$GUEST_SUITE" ]; then \
      echo "erlang:$OTP_VERSION is Debian $VERSION_CODENAME, the guest is $GUEST_SUITE" >&2; exit 1; fi
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev ncurses-dev \
 && rm -rf /var/lib/apt/lists/*
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --profile minimal --default-toolchain stable
# Node (genesis_wasm builds and runs a JavaScript compute server)
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules /usr/local/lib/node_modules
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx
ARG HB_REPO
ARG HB_COMMIT
# default: what hb-os ships (_build/default/rel/hb); genesis_wasm would clone
# ao during the build and spawn a launcher script the guest does not have
ARG HB_PROFILE=default
RUN test -n "$HB_REPO" && test -n "$HB_COMMIT" \
 && git init -q /build/HyperBEAM && cd /build/HyperBEAM \
 && git remote add origin "$HB_REPO" \
 && git fetch -q --depth=1 origin "$HB_COMMIT" \
 && git checkout -q FETCH_HEAD \
 && mkdir -p /hbos/refs && git rev-parse HEAD > /hbos/refs/hyperbeam
COPY config.flat /build/HyperBEAM/config.flat
RUN cd /build/HyperBEAM \
 && rebar3 as "$HB_PROFILE" release \
 && mkdir -p /hbos/tree/opt \
 && cp -a "_build/$HB_PROFILE/rel/hb" /hbos/tree/opt/hyperbeam \
 && if ! ls -d /hbos/tree/opt/hyperbeam/erts-* >/dev/null 2>&1; then \
      echo "the HyperBEAM release has no ERTS (include_erts): the guest has no Erlang" >&2; exit 1; fi \
 && rm -f /hbos/tree/opt/hyperbeam/config.flat

# ------------------------------------------------------------------ AO compute unit
FROM node AS cu
ARG AO_REPO
ARG AO_COMMIT
# UNIT_MODE from content.cu_env: the checked-out CU must accept it (fails early,
# before npm ci, naming the modes the source accepts)
ARG CU_UNIT_MODE=cu
COPY cu-mode-check.sh /usr/local/bin/cu-mode-check
RUN test -n "$AO_REPO" && test -n "$AO_COMMIT" \
 && git init -q /build/ao && cd /build/ao \
 && git remote add origin "$AO_REPO" \
 && git sparse-checkout set servers/cu \
 && git fetch -q --depth=1 --filter=blob:none origin "$AO_COMMIT" \
 && git checkout -q FETCH_HEAD \
 && mkdir -p /hbos/refs && git rev-parse HEAD > /hbos/refs/ao
RUN cu-mode-check /build/ao/servers/cu "$CU_UNIT_MODE"
RUN cd /build/ao/servers/cu \
 && npm ci --omit=dev --no-audit --no-fund \
 && mkdir -p /hbos/tree/opt/node/bin \
 && cp -a /build/ao/servers/cu /hbos/tree/opt/cu \
 && rm -f /hbos/tree/opt/cu/.env \
 && cp /usr/local/bin/node /hbos/tree/opt/node/bin/node

# ------------------------------------------------------------------ outputs
# HyperBEAM only (content.cu: false) ...
FROM scratch AS content-hb
COPY --from=hyperbeam /hbos/ /hbos/
COPY --from=node /usr/local/bin/node /hbos/tree/opt/node/bin/node

# ... and HyperBEAM + the compute unit (the default target).
FROM content-hb AS content
COPY --from=cu /hbos/ /hbos/

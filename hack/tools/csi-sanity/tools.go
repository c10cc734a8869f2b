//go:build tools

// Package tools pins csi-sanity so that go.sum checksums every dependency.
package tools

import _ "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity"

//go:build tools

// Package tools pins helm so that go.sum checksums every dependency.
package tools

import _ "helm.sh/helm/v3/cmd/helm"

//go:build tools

// Package tools pins kubeconform so that go.sum checksums every dependency.
package tools

import _ "github.com/yannh/kubeconform/cmd/kubeconform"

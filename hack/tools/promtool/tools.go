//go:build tools

// Package tools pins promtool so that go.sum checksums every dependency.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"

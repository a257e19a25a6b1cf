//go:build tools

// Package tools records the upstream command this module builds (the
// CoreDNS server, the repository's root package), so that `go mod tidy`
// keeps every module it needs in go.mod and go.sum.
package tools

import (
	_ "github.com/coredns/coredns"
)

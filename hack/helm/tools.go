//go:build tools

// Package tools pins the upstream main package this module builds: helm's CLI.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)

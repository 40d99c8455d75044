//go:build tools

// Package tools pins the upstream main package this module builds: the LeaderWorkerSet
// controller manager (sigs.k8s.io/lws/cmd).
package tools

import (
	_ "sigs.k8s.io/lws/cmd"
)

//go:build tools

// Package tools pins etcd's server command. Debian's etcd (3.4.23) is older than the
// 3.4.31 the apiserver needs for watch progress requests; 3.5.21 is what k8s 1.33 pins.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)

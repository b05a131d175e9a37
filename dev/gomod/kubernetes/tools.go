//go:build tools

// Package tools pins the Kubernetes commands this wrapper module builds: the control plane,
// kubectl, and the real node's kubelet and kube-proxy.
// k8s.io/kubernetes cannot be `go install`ed directly: its go.mod replaces the staging
// modules with local paths, so this module replaces them with their published versions.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)

#!/usr/bin/env bash
# Builds the local control plane's binaries from the Go module proxy and caches them by
# version under ${TEMPOTRAIN_CACHE:-~/.cache/tempotrain}/bin/<tool>-<version>/.
# Progress goes to stderr, one line per tool ("cache hit" or "built in Ns"); stdout gets one
# "<tool>=<dir>" line per tool for tempotrain_dev to read. Safe to re-run; a tool is only
# rebuilt when its version (or its wrapper's go.sum) changes.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
cache="${TEMPOTRAIN_CACHE:-$HOME/.cache/tempotrain}"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

# The wrapper's go.sum is part of the key: a changed dependency set must rebuild.
sum_key() { sha256sum "$1/go.sum" | cut -c1-12; }

# shellcheck source=build-once.sh
source "$here/build-once.sh"

build_kubernetes() {
  local out="$1" v="v$KUBERNETES_VERSION" minor
  minor="$(cut -d. -f2 <<<"$KUBERNETES_VERSION")"
  # Without these stamps /version reports v0.0.0-master and kubectl warns about skew.
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$here/gomod/kubernetes" && go build -trimpath -ldflags "$ldflags" -o "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy)
}

build_etcd() {
  (cd "$here/gomod/etcd" && go build -trimpath -ldflags "-s -w" -o "$1/etcd" go.etcd.io/etcd/server/v3)
}

go_install() { # go_install <out> <package@version>
  GOBIN="$1" go install -trimpath -ldflags "-s -w" "$2"
}

# module_dir <module@version> <empty dir>: prints the module's folder in GOMODCACHE,
# downloading it first. Run from an empty dir, outside any module, so no go.mod of ours changes.
module_dir() {
  (cd "$2" && GOFLAGS=-mod=mod go mod download -json "$1") \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'
}

kuberay_module() { module_dir "github.com/ray-project/kuberay/ray-operator@v$KUBERAY_VERSION" "$1"; }

kuberay_crds() {
  local dir
  dir="$(kuberay_module "$1")"
  cp "$dir"/config/crd/bases/ray.io_*.yaml "$1/"
}

# Not `go install ...@v`: that first asks the proxy for the module's version list (to look for
# a deprecation notice), which the proxy here refuses with 403. Building inside the downloaded
# module uses the same go.mod and go.sum, so it is the binary `go install` would make.
build_kuberay() {
  local dir
  dir="$(kuberay_module "$1")"
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$1/ray-operator" .)
}

build_once kubernetes "$cache/bin/kubernetes-$KUBERNETES_VERSION-$(sum_key "$here/gomod/kubernetes")" \
  "kubernetes v$KUBERNETES_VERSION" build_kubernetes
build_once etcd "$cache/bin/etcd-$ETCD_VERSION-$(sum_key "$here/gomod/etcd")" "etcd v$ETCD_VERSION" build_etcd
build_kwok() { go_install "$1" "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION"; }
build_helm() { go_install "$1" "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"; }

# CoreDNS: the real node's cluster DNS. Built in its own module like KubeRay (same reason).
build_coredns() {
  local dir
  dir="$(module_dir "github.com/coredns/coredns@v$COREDNS_VERSION" "$1")"
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$1/coredns" .)
}

# The real node's sandbox ("pause") program: ours, in dev/gomod/pause.
build_pause() {
  (cd "$here/gomod/pause" && go build -trimpath -ldflags "-s -w" -o "$1/pause" .)
}

# Kueue: built inside its downloaded module like KubeRay (same reason). Only v0.17.0 and
# v0.17.1 are served by the module proxy here; see docs/queueing.md for the pin.
kueue_module() { module_dir "sigs.k8s.io/kueue@v$KUEUE_VERSION" "$1"; }

build_kueue() {
  local dir
  dir="$(kueue_module "$1")"
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$1/kueue" ./cmd/kueue)
}

# The raw CRD bases: served versions v1beta1 and v1beta2 with no conversion webhook (the
# kustomize patches add one); every client here speaks v1beta2 only.
kueue_crds() {
  local dir
  dir="$(kueue_module "$1")"
  cp "$dir"/config/components/crd/bases/kueue.x-k8s.io_*.yaml "$1/"
}

build_once kwok "$cache/bin/kwok-$KWOK_VERSION" "kwok v$KWOK_VERSION" build_kwok
build_once helm "$cache/bin/helm-$HELM_VERSION" "helm v$HELM_VERSION" build_helm
build_once kuberay "$cache/bin/kuberay-$KUBERAY_VERSION" "KubeRay operator v$KUBERAY_VERSION" build_kuberay
build_once kuberay_crds "$cache/crds/kuberay-$KUBERAY_VERSION" "KubeRay CRDs v$KUBERAY_VERSION" kuberay_crds
build_once kueue "$cache/bin/kueue-$KUEUE_VERSION" "Kueue v$KUEUE_VERSION" build_kueue
build_once kueue_crds "$cache/crds/kueue-$KUEUE_VERSION" "Kueue CRDs v$KUEUE_VERSION" kueue_crds
build_once coredns "$cache/bin/coredns-$COREDNS_VERSION" "CoreDNS v$COREDNS_VERSION" build_coredns
build_once pause "$cache/bin/pause-$(cat "$here"/gomod/pause/* | sha256sum | cut -c1-12)" "pause" build_pause

#!/usr/bin/env bash
# The kube and e2e tests against a kind cluster with real pods (the Docker path of DESIGN §6).
#
#   bash dev/kind-e2e.sh [pytest args...]
#
# Without Docker (or kind) it prints "skipped: <why>" and exits 0. Otherwise it
#   1. creates the kind cluster from kind-config.yaml (name tempotrain-e2e; an existing one is
#      reused), with PVC data under .tempotrain/kind-data/ on the host;
#   2. lets the local-path provisioner serve ReadWriteMany claims (shared folder, see
#      kind-config.yaml) and advertises fake `nvidia.com/gpu` capacity on the worker node;
#   3. builds tempotrain/operator:dev and tempotrain/workers:dev (also tagged with the names
#      the tests use: tempotrain/workers:test, and the chart's operator repository with tag
#      `test`), smoke-runs both as uid 1000 with a read-only root filesystem, `kind load`s them;
#   4. runs a KubeRay operator (KUBERAY, below);
#   5. `helm upgrade --install`s charts/tempotrain with those images and the Temporal dev server,
#      and waits for the rollout;
#   6. port-forwards Temporal, exports TEMPOTRAIN_KUBECONFIG / TEMPOTRAIN_TEMPORAL_ADDRESS and
#      runs `pytest tests/kube tests/e2e -m kube` (the fixtures reuse this cluster and Temporal);
#   7. tears down what it started (port-forward, KubeRay process, and the cluster if this run
#      created it) unless KEEP_CLUSTER=1. Exits with pytest's status.
#
# Besides Docker and kind it needs what `make test` needs: the project venv (`make venv`) and Go
# (dev/build-tools.sh builds kubectl, helm and the KubeRay operator, or finds them cached).
#
# The chart's operator watches only its own namespace (rbac.scope=namespaced): the e2e tests
# start an operator of their own per test namespace, and two operators must never reconcile
# the same experiment.
#
# Environment:
#   KEEP_CLUSTER=1       keep the cluster afterwards (one that existed before is always kept)
#   CLUSTER_NAME=...     kind cluster name (default tempotrain-e2e)
#   KIND_NODE_IMAGE=...  node image instead of the one kind-config.yaml pins (see there)
#   SKIP_BUILD=1         use the tempotrain/*:dev images already built
#   KUBERAY=host         (default) the KubeRay CRDs, and the operator dev/build-tools.sh built,
#                        running on this machine against the cluster (nothing to pull)
#   KUBERAY=helm         the upstream kuberay-operator Helm chart in the cluster (pulls its chart
#                        and image from the internet)
#   KUBERAY=crds         only the CRDs: RayClusters are accepted but never become ready
#   KUBERAY=none         nothing (the Cifar10Scaling tests then fail with KubeRayMissing)
#   FAKE_GPUS=N          nvidia.com/gpu capacity advertised on the worker node (default 4; 0: none)
#   PYTEST_ARGS="..."    extra pytest arguments (as are this script's own arguments)
#   DOCKER=..., KIND=... the docker and kind commands (default: from PATH)
set -euo pipefail

skip() {
  echo "skipped: $*"
  exit 0
}

DOCKER="${DOCKER:-docker}"
KIND="${KIND:-kind}"
command -v "$DOCKER" >/dev/null 2>&1 \
  || skip "'$DOCKER' not found: the kind path needs a Docker engine (without one: make test)"
command -v "$KIND" >/dev/null 2>&1 \
  || skip "'$KIND' not found: install kind for the real-pod path (without it: make test)"
if command -v timeout >/dev/null 2>&1; then
  timeout 60 "$DOCKER" info >/dev/null 2>&1 \
    || skip "'$DOCKER info' failed: no reachable Docker engine (without one: make test)"
else
  "$DOCKER" info >/dev/null 2>&1 \
    || skip "'$DOCKER info' failed: no reachable Docker engine (without one: make test)"
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=SCRIPTDIR/versions.env
source "$repo/dev/versions.env"

cluster="${CLUSTER_NAME:-tempotrain-e2e}"
namespace=tempotrain-system
release=tempotrain
operator_image=tempotrain/operator:dev
workers_image=tempotrain/workers:dev
test_workers_image=tempotrain/workers:test # what tests/e2e's operator puts in worker pods
kuberay_mode="${KUBERAY:-host}"
fake_gpus="${FAKE_GPUS:-4}"
state="$repo/.tempotrain/kind"
data="$repo/.tempotrain/kind-data"
kubeconfig="$state/kubeconfig"
py="$repo/.venv/bin/python"

log() { echo "[kind-e2e] $*" >&2; }
die() {
  echo "[kind-e2e] error: $*" >&2
  exit 1
}

[[ -x "$py" ]] || die "$py not found: create the project venv first (make venv)"
[[ -f charts/tempotrain/Chart.yaml ]] || die "charts/tempotrain/Chart.yaml not found"
case "$kuberay_mode" in host | helm | crds | none) ;; *) die "KUBERAY=$kuberay_mode: use host, helm, crds or none" ;; esac
[[ "$fake_gpus" =~ ^[0-9]+$ ]] || die "FAKE_GPUS=$fake_gpus: a whole number, please"
mkdir -p "$state" "$data"
export PATH="$repo/.venv/bin:$PATH"

# --- teardown: only what this run started, each by its own PID ----------------------------------
created=0
pids=()
# shellcheck disable=SC2329 # invoked by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT
  if [[ $rc -ne 0 && -s "$kubeconfig" ]]; then
    log "diagnostics (exit $rc):"
    "${kubectl:-kubectl}" --kubeconfig "$kubeconfig" --request-timeout=10s get pods -A -o wide >&2 2>/dev/null || true
    "${kubectl:-kubectl}" --kubeconfig "$kubeconfig" --request-timeout=10s -n "$namespace" logs \
      "deployment/$release-operator" --tail=40 >&2 2>/dev/null || true
  fi
  for pid in ${pids[@]+"${pids[@]}"}; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ $created -eq 1 && "${KEEP_CLUSTER:-0}" != 1 ]]; then
    log "deleting kind cluster $cluster (KEEP_CLUSTER=1 keeps it)"
    "$KIND" delete cluster --name "$cluster" >&2 || true
  elif "$KIND" get clusters 2>/dev/null | grep -qx "$cluster"; then
    log "kept kind cluster $cluster: KUBECONFIG=$kubeconfig; remove it with" \
      "'$KIND delete cluster --name $cluster' (PVC data stays in $data)"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- tools: kubectl, helm and KubeRay as the tests use them (cached after the first build) ------
log "dev/build-tools.sh (kubectl, helm, KubeRay; cached)"
tool_lines="$(bash dev/build-tools.sh)"
tool_dir() { sed -n "s/^$1=//p" <<<"$tool_lines"; }
kubectl="$(tool_dir kubernetes)/kubectl"
helm="$(tool_dir helm)/helm"
[[ -x "$kubectl" && -x "$helm" ]] || die "dev/build-tools.sh gave no kubectl/helm"
k() { "$kubectl" --kubeconfig "$kubeconfig" "$@"; }

# --- 1. the cluster -------------------------------------------------------------------------------
if "$KIND" get clusters 2>/dev/null | grep -qx "$cluster"; then
  log "reusing kind cluster $cluster"
else
  # docker needs an absolute bind-mount source: resolve kind-config.yaml's relative hostPath.
  config="$state/kind-config.yaml"
  sed "s#hostPath: \./\.tempotrain/kind-data#hostPath: $data#" kind-config.yaml >"$config"
  grep -q "hostPath: $data" "$config" \
    || die "kind-config.yaml has no 'hostPath: ./.tempotrain/kind-data' to resolve"
  image_args=()
  [[ -n "${KIND_NODE_IMAGE:-}" ]] && image_args=(--image "$KIND_NODE_IMAGE")
  log "creating kind cluster $cluster (PVC data in $data)"
  created=1
  "$KIND" create cluster --name "$cluster" --config "$config" \
    ${image_args[@]+"${image_args[@]}"} --wait 180s
fi
"$KIND" get kubeconfig --name "$cluster" >"$kubeconfig"
chmod 600 "$kubeconfig"
k wait --for=condition=Ready nodes --all --timeout=180s >/dev/null

# --- 2. storage and the GPU stand-in --------------------------------------------------------------
# The same host folder is mounted at /var/local-path-provisioner on every node (kind-config.yaml),
# so the provisioner may treat it as a shared filesystem: RWX claims, PVs without node affinity.
log "local-path provisioner: shared filesystem /var/local-path-provisioner (RWX claims)"
k -n local-path-storage patch configmap local-path-config --type merge \
  -p '{"data":{"config.json":"{\"sharedFileSystemPath\": \"/var/local-path-provisioner\"}"}}' \
  >/dev/null
k -n local-path-storage rollout restart deployment/local-path-provisioner >/dev/null
k -n local-path-storage rollout status deployment/local-path-provisioner --timeout=180s >/dev/null

if [[ "$fake_gpus" -gt 0 ]]; then
  mapfile -t gpu_nodes < <(k get nodes -l tempotrain.dev/node-pool=gpu -o name)
  [[ ${#gpu_nodes[@]} -gt 0 ]] || die "no node labelled tempotrain.dev/node-pool=gpu (kind-config.yaml)"
  for node in "${gpu_nodes[@]}"; do
    log "advertising nvidia.com/gpu: $fake_gpus on ${node#node/} (no device plugin: pods run on CPU)"
    k patch "$node" --subresource=status --type=json \
      -p "[{\"op\":\"add\",\"path\":\"/status/capacity/nvidia.com~1gpu\",\"value\":\"$fake_gpus\"}]" \
      >/dev/null
  done
  # The kubelet copies capacity to allocatable on its next node status update.
  for attempt in $(seq 60); do
    allocatable="$(k get "${gpu_nodes[@]}" -o jsonpath='{.items[*].status.allocatable.nvidia\.com/gpu}')"
    [[ " $allocatable " == *" $fake_gpus "* ]] && break
    [[ $attempt -eq 60 ]] && die "nvidia.com/gpu never became allocatable on ${gpu_nodes[*]}"
    sleep 2
  done
fi

# --- 3. images --------------------------------------------------------------------------------------
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building $operator_image"
  "$DOCKER" build -f operator/Dockerfile -t "$operator_image" .
  log "building $workers_image"
  "$DOCKER" build -f workers/Dockerfile -t "$workers_image" .
fi
"$DOCKER" tag "$workers_image" "$test_workers_image"
# tests/e2e/test_helm_install.py installs the chart with its default operator repository and
# tag `test`: give that name to the operator image as well.
chart_operator_repository="$("$py" -c 'import yaml; print(yaml.safe_load(open("charts/tempotrain/values.yaml"))["operator"]["image"]["repository"])')"
test_operator_image="$chart_operator_repository:test"
"$DOCKER" tag "$operator_image" "$test_operator_image"

log "smoke test: both images as uid 1000 with a read-only root filesystem"
locked_run() { "$DOCKER" run --rm --read-only --tmpfs /tmp --user 1000:1000 "$@"; }
locked_run "$operator_image" --help >/dev/null
locked_run --entrypoint python "$operator_image" -c \
  "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'ray')))"
locked_run "$workers_image" --help >/dev/null
locked_run --entrypoint bash "$workers_image" -lc 'ray --version && command -v wget' >/dev/null

workers_nodes="$("$KIND" get nodes --name "$cluster" | grep -v -- '-control-plane$' | paste -sd, -)"
log "kind load into $workers_nodes"
"$KIND" load docker-image --name "$cluster" --nodes "$workers_nodes" \
  "$operator_image" "$test_operator_image" "$workers_image" "$test_workers_image"

# --- 4. KubeRay -------------------------------------------------------------------------------------
apply_kuberay_crds() {
  local crds
  crds="$(tool_dir kuberay_crds)"
  [[ -d "$crds" ]] || die "dev/build-tools.sh gave no KubeRay CRDs"
  k apply --server-side --force-conflicts -f "$crds" >/dev/null
  k wait --for=condition=Established crd/rayclusters.ray.io --timeout=60s >/dev/null
}
case "$kuberay_mode" in
  host)
    log "KubeRay v$KUBERAY_VERSION: CRDs, and the operator as a process on this machine"
    apply_kuberay_crds
    probe_port="$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    ENABLE_WEBHOOKS=false "$(tool_dir kuberay)/ray-operator" --kubeconfig="$kubeconfig" \
      --enable-leader-election=false --metrics-addr=0 \
      --health-probe-bind-address="127.0.0.1:$probe_port" --watch-namespace= \
      --log-stdout-encoder=console >"$state/kuberay-operator.log" 2>&1 &
    pids+=("$!")
    for attempt in $(seq 60); do
      "$py" -c "import urllib.request as r; r.urlopen('http://127.0.0.1:$probe_port/readyz', timeout=2)" \
        2>/dev/null && break
      kill -0 "${pids[-1]}" 2>/dev/null || die "ray-operator exited: see $state/kuberay-operator.log"
      [[ $attempt -eq 60 ]] && die "ray-operator not ready after 120 s: see $state/kuberay-operator.log"
      sleep 2
    done
    ;;
  helm)
    log "KubeRay v$KUBERAY_VERSION: the upstream kuberay-operator chart"
    "$helm" --kubeconfig "$kubeconfig" upgrade --install kuberay-operator kuberay-operator \
      --repo https://ray-project.github.io/kuberay-helm/ --version "$KUBERAY_VERSION" \
      --namespace kuberay-system --create-namespace --wait --timeout 10m
    ;;
  crds)
    log "KubeRay v$KUBERAY_VERSION: CRDs only (RayClusters never become ready)"
    apply_kuberay_crds
    ;;
  none) log "no KubeRay (KUBERAY=none)" ;;
esac

# --- 5. the chart -------------------------------------------------------------------------------------
# --take-ownership: on a reused cluster the CRDs (kept on uninstall) may belong to another
# release, e.g. one a test installed, or carry no Helm metadata (the tests' `crds` fixture).
log "helm upgrade --install $release charts/tempotrain (namespace $namespace)"
"$helm" --kubeconfig "$kubeconfig" upgrade --install "$release" charts/tempotrain \
  --namespace "$namespace" --create-namespace --take-ownership \
  --set operator.image.repository="${operator_image%:*}" \
  --set-string operator.image.tag="${operator_image##*:}" \
  --set operator.image.pullPolicy=IfNotPresent \
  --set workers.image.repository="${workers_image%:*}" \
  --set-string workers.image.tag="${workers_image##*:}" \
  --set temporal.devServer.enabled=true \
  --set rbac.scope=namespaced \
  --set "watchNamespaces={$namespace}" \
  --wait --timeout 10m
for deployment in $(k -n "$namespace" get deployments -o name); do
  k -n "$namespace" rollout status "$deployment" --timeout=300s
done

# --- 6. Temporal on a local port, then the tests --------------------------------------------------------
selector="app.kubernetes.io/instance=$release,app.kubernetes.io/component=temporal-dev-server"
temporal_service="$(k -n "$namespace" get services -l "$selector" -o name | head -n1)"
[[ -n "$temporal_service" ]] || die "no Temporal dev server Service ($selector)"
grpc_port="$(k -n "$namespace" get "$temporal_service" -o jsonpath='{.spec.ports[?(@.name=="grpc")].port}')"
local_port="$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
k -n "$namespace" port-forward "$temporal_service" "$local_port:${grpc_port:-7233}" \
  >"$state/port-forward.log" 2>&1 &
pids+=("$!")
temporal_address="127.0.0.1:$local_port"
for attempt in $(seq 60); do
  temporal operator cluster health --address "$temporal_address" >/dev/null 2>&1 && break
  kill -0 "${pids[-1]}" 2>/dev/null || die "kubectl port-forward exited: see $state/port-forward.log"
  [[ $attempt -eq 60 ]] && die "Temporal at $temporal_address not healthy after 120 s"
  sleep 2
done
log "Temporal dev server at $temporal_address (port-forward of ${temporal_service#service/})"

export TEMPOTRAIN_KUBECONFIG="$kubeconfig" TEMPOTRAIN_TEMPORAL_ADDRESS="$temporal_address"
# The real-pod tests (tests/e2e/test_*pods.py, the Helm-installed operator) run these images,
# as on the local platform's real node. Tests that SIGKILL a container through the node's
# containerd are skipped here (kind's nodes are Docker containers).
export TEMPOTRAIN_WORKERS_IMAGE="$workers_image" TEMPOTRAIN_OPERATOR_IMAGE="$operator_image"
export KUBECONFIG="$kubeconfig"
read -r -a extra_args <<<"${PYTEST_ARGS:-}"
log "pytest tests/kube tests/e2e -m kube ${PYTEST_ARGS:-} $*"
set +e
"$py" -m pytest tests/kube tests/e2e -m kube ${extra_args[@]+"${extra_args[@]}"} "$@"
rc=$?
set -e
exit "$rc"

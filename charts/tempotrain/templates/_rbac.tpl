{{/*
The operator's rules in the watched namespaces (all of them with rbac.scope=cluster, in a
ClusterRole; each of watchNamespaces with rbac.scope=namespaced, in a Role). Exactly the calls
the operator makes; no wildcards. The operator reads an object by name with a GET
(`kube.get_object`); kr8s' own `get(name)`, a LIST with a fieldSelector on the name, remains
for Workloads, hence `list` there.
*/}}
{{- define "tempotrain.operatorRules" -}}
# Framework (kopf): posting the events of handlers' progress and errors, and of
# kopf.info/kopf.warn (Created, WorkflowStarted, InvalidSpec, ChildCreateFailed, ...).
# Application: watching Warning events (`type=Warning`, a server-side selector): a worker pod
# stuck being created (a missing Secret or claim its volumes need) and a claim a provisioner
# cannot make say why, in the conditions WorkersReady and StorageReady.
- apiGroups: [""]
  resources: [events]
  verbs: [create, list, watch]
# Framework (kopf) + application: watching the experiments (kopf list/watch), patching their
# finalizer and kopf's progress annotations (kopf), reading one by name for the status sink
# (a GET).
- apiGroups: [tempotrain.dev]
  resources: [bertexperiments, cifar10scalings, batchinferences]
  verbs: [get, list, watch, patch]
# Framework (kopf) + application: status writes go through the status subresource only
# (kopf's handler patches and the status sink's merge patches).
- apiGroups: [tempotrain.dev]
  resources: [bertexperiments/status, cifar10scalings/status, batchinferences/status]
  verbs: [patch]
# Application: children are adopted with ownerReferences that set blockOwnerDeletion; where
# the OwnerReferencesPermissionEnforcement admission plugin runs (OpenShift), that needs
# `update` on the owner's finalizers subresource.
- apiGroups: [tempotrain.dev]
  resources: [bertexperiments/finalizers, cifar10scalings/finalizers, batchinferences/finalizers]
  verbs: [update]
# Application: each experiment's snapshots and runs volumes, created if absent (one that
# exists read by name, a GET), and watched to say why one stays Pending (condition
# StorageReady); never updated or deleted by the operator: Retain data outlives the
# experiment.
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [create, get, list, watch]
# Application: the worker Deployments, created if absent and scaled to 0 when the experiment
# finishes (read by name, a GET; kr8s scale = GET + PATCH of spec.replicas, then GET until it
# reads back); an existing one brought to the spec (a GET, a PATCH).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, create, patch]
# Application: the experiments' worker pods, watched (those with the experiment label: a
# server-side selector) to say on the experiment why one cannot start or keeps crashing
# (condition WorkersReady), and whether any still runs.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# Application: a Cifar10Scaling's KubeRay cluster, created if absent, read for its state,
# deleted when the experiment finishes (spec.ray.onCompletion: Delete).
- apiGroups: [ray.io]
  resources: [rayclusters]
  verbs: [get, create, delete]
{{- if .Values.kueue.enabled }}
# Application (kueue.enabled): each queued experiment's Workload, created if absent and read
# by name (a LIST); its finalizer removed once the experiment is over (patch).
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [list, create, patch]
# Application (kueue.enabled): what Kueue's job integrations write on the job's side: an
# evicted Workload's reservation cleared once its pods are gone, and Finished at the end.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads/status]
  verbs: [patch]
# Application (kueue.enabled): the Workload is controller-owned by its experiment, with
# blockOwnerDeletion (as Kueue's integrations make them).
- apiGroups: [tempotrain.dev]
  resources: [bertexperiments/finalizers, cifar10scalings/finalizers, batchinferences/finalizers]
  verbs: [update]
{{- end }}
{{- end }}

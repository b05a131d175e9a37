{{/*
Chart name (app.kubernetes.io/name).
*/}}
{{- define "tempotrain.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name alone when it already contains the chart
name. Truncated to 63 characters (DNS label), leaving room for the suffixes added below.
*/}}
{{- define "tempotrain.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
helm.sh/chart label value.
*/}}
{{- define "tempotrain.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels. Call with (dict "context" $ "component" "operator"): the component is part of
the selector, so the operator's and the dev server's Deployments never select each other's
pods (nor the worker pods the operator creates, which carry app.kubernetes.io/name too).
*/}}
{{- define "tempotrain.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tempotrain.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Common labels. Call with (dict "context" $ "component" "operator").
*/}}
{{- define "tempotrain.labels" -}}
helm.sh/chart: {{ include "tempotrain.chart" .context }}
{{ include "tempotrain.selectorLabels" . }}
app.kubernetes.io/version: {{ .context.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
{{- end }}

{{/*
The operator's ServiceAccount.
*/}}
{{- define "tempotrain.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tempotrain.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Names of the other objects.
*/}}
{{- define "tempotrain.operatorName" -}}
{{- printf "%s-operator" (include "tempotrain.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "tempotrain.frameworkRoleName" -}}
{{- printf "%s-kopf" (include "tempotrain.fullname" . | trunc 58 | trimSuffix "-") }}
{{- end }}

{{- define "tempotrain.devServerName" -}}
{{- printf "%s-temporal" (include "tempotrain.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/* The dev server's database claim: the user's, or the chart's. */}}
{{- define "tempotrain.devServerClaim" -}}
{{- .Values.temporal.devServer.persistence.existingClaim | default (printf "%s-data" (include "tempotrain.devServerName" .)) }}
{{- end }}

{{/*
Images: the tag defaults to the chart's appVersion.
*/}}
{{- define "tempotrain.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) }}
{{- end }}

{{- define "tempotrain.workerImage" -}}
{{- printf "%s:%s" .Values.workers.image.repository (default .Chart.AppVersion .Values.workers.image.tag) }}
{{- end }}

{{/*
The Temporal frontend the operator (and, through it, the worker pods) connects to: the
configured address, else the dev server's Service by a name that resolves from every namespace.
*/}}
{{- define "tempotrain.temporalAddress" -}}
{{- if .Values.temporal.address }}
{{- .Values.temporal.address }}
{{- else if .Values.temporal.devServer.enabled }}
{{- printf "%s.%s.svc:%d" (include "tempotrain.devServerName" .) .Release.Namespace (int .Values.temporal.devServer.service.grpcPort) }}
{{- end }}
{{- end }}

{{/*
Where the operator finds its Temporal credentials.
*/}}
{{- define "tempotrain.tlsMountPath" -}}/etc/tempotrain/temporal-tls{{- end }}
{{- define "tempotrain.apiKeyMountPath" -}}/etc/tempotrain/temporal-api-key{{- end }}

{{/*
Is the operator's cluster-wide ClusterRole (framework + application rules) rendered?
*/}}
{{- define "tempotrain.clusterScoped" -}}
{{- if eq .Values.rbac.scope "cluster" }}true{{ end }}
{{- end }}

{{/*
Refuse values that make no sense, with a message that says what to change. Included by the
operator Deployment, which is always rendered, so `helm template`, `helm lint` and
`helm install` all stop on the first problem.
values.schema.json checks the types and ranges first; these checks repeat the ranges that
matter (for `--skip-schema-validation`) and add the rules across fields a schema cannot state.
*/}}
{{- define "tempotrain.validateConfig" -}}
{{- $v := .Values }}
{{- $replicas := int $v.operator.replicas }}
{{- if lt $replicas 0 }}
{{- fail (printf "operator.replicas must be 0 (to pause the operator) or more, not %d" $replicas) }}
{{- end }}
{{- if lt (float64 $v.operator.leaseSeconds) 3.0 }}
{{- fail (printf "operator.leaseSeconds must be at least 3 (a replica renews its Lease every third of it), not %v" $v.operator.leaseSeconds) }}
{{- end }}
{{- if le (float64 $v.operator.resyncSeconds) 0.0 }}
{{- fail (printf "operator.resyncSeconds must be greater than 0, not %v" $v.operator.resyncSeconds) }}
{{- end }}
{{- if not $v.operator.image.repository }}
{{- fail "operator.image.repository must not be empty" }}
{{- end }}
{{- if not $v.workers.image.repository }}
{{- fail "workers.image.repository must not be empty: the operator creates the worker pods from it" }}
{{- end }}
{{- /* RBAC scope and watched namespaces */}}
{{- $scopes := list "cluster" "namespaced" }}
{{- if not (has $v.rbac.scope $scopes) }}
{{- fail (printf "rbac.scope must be one of %s, not %q" (join ", " $scopes) (toString $v.rbac.scope)) }}
{{- end }}
{{- if and (eq $v.rbac.scope "cluster") $v.watchNamespaces }}
{{- fail (printf "watchNamespaces is set (%s) but rbac.scope is cluster: set rbac.scope=namespaced to watch only those namespaces with Roles, or clear watchNamespaces to watch all of them" (join ", " $v.watchNamespaces)) }}
{{- end }}
{{- if and (eq $v.rbac.scope "namespaced") (not $v.watchNamespaces) }}
{{- fail "rbac.scope is namespaced but watchNamespaces is empty: list the namespaces to watch (an empty list makes the operator watch all namespaces, which Roles cannot allow)" }}
{{- end }}
{{- if ne (len $v.watchNamespaces) (len (uniq $v.watchNamespaces)) }}
{{- fail (printf "watchNamespaces lists a namespace twice: %s" (join ", " $v.watchNamespaces)) }}
{{- end }}
{{- if and (not $v.serviceAccount.create) (not $v.serviceAccount.name) }}
{{- fail "serviceAccount.create is false: set serviceAccount.name to the existing ServiceAccount the operator runs as" }}
{{- end }}
{{- /* Temporal connection */}}
{{- $modes := list "disabled" "tls" "mtls" }}
{{- $tls := $v.temporal.tls }}
{{- if not (has $tls.mode $modes) }}
{{- fail (printf "temporal.tls.mode must be one of %s, not %q" (join ", " $modes) (toString $tls.mode)) }}
{{- end }}
{{- if and (eq $tls.mode "disabled") $tls.secretName }}
{{- fail (printf "temporal.tls.secretName is %q but temporal.tls.mode is disabled: set the mode to tls or mtls, or clear the secret name" $tls.secretName) }}
{{- end }}
{{- if eq $tls.mode "mtls" }}
{{- if not $tls.secretName }}
{{- fail "temporal.tls.mode is mtls: set temporal.tls.secretName to the Secret with the client certificate and key" }}
{{- end }}
{{- if or (not $tls.certKey) (not $tls.keyKey) }}
{{- fail "temporal.tls.mode is mtls: temporal.tls.certKey and temporal.tls.keyKey must name the client certificate and key in the Secret" }}
{{- end }}
{{- end }}
{{- if eq $tls.mode "tls" }}
{{- if and $tls.secretName (not $tls.caKey) }}
{{- fail "temporal.tls.mode is tls with temporal.tls.secretName set: temporal.tls.caKey must name the CA bundle in the Secret" }}
{{- end }}
{{- end }}
{{- if $v.temporal.apiKey.enabled }}
{{- if not $v.temporal.apiKey.secretName }}
{{- fail "temporal.apiKey.enabled is true: set temporal.apiKey.secretName to the Secret that holds the API key" }}
{{- end }}
{{- if not $v.temporal.apiKey.key }}
{{- fail "temporal.apiKey.enabled is true: temporal.apiKey.key must name the API key in the Secret" }}
{{- end }}
{{- if eq $tls.mode "disabled" }}
{{- fail "temporal.apiKey.enabled is true but temporal.tls.mode is disabled: an API key is only sent over TLS (the operator turns TLS on with it), so set temporal.tls.mode to tls" }}
{{- end }}
{{- end }}
{{- if and (not $v.temporal.address) (not $v.temporal.devServer.enabled) }}
{{- fail "temporal.address is empty: set it to your Temporal frontend (host:port), or set temporal.devServer.enabled=true to run a dev server" }}
{{- end }}
{{- if and $v.temporal.devServer.enabled (not $v.temporal.address) (or (ne $tls.mode "disabled") $v.temporal.apiKey.enabled) }}
{{- fail "the Temporal dev server speaks plain gRPC: with temporal.devServer.enabled and no temporal.address, set temporal.tls.mode=disabled and temporal.apiKey.enabled=false" }}
{{- end }}
{{- if and $v.temporal.devServer.enabled (eq (int $v.temporal.devServer.service.grpcPort) (int $v.temporal.devServer.service.uiPort)) }}
{{- fail "temporal.devServer.service.grpcPort and uiPort must differ" }}
{{- end }}
{{- if and (or (eq $tls.mode "mtls") (and (eq $tls.mode "tls") $tls.secretName) $v.temporal.apiKey.enabled) (not $v.workers.temporalSecretName) }}
{{- fail "the operator gets Temporal credentials (a CA bundle, a client certificate or an API key) but the worker pods would get none: set workers.temporalSecretName to a Secret, in each experiment's namespace, with the keys they need (ca.crt, tls.crt, tls.key, api-key)" }}
{{- end }}
{{- $persistence := $v.temporal.devServer.persistence }}
{{- if and $v.temporal.devServer.enabled $persistence.enabled $persistence.existingClaim $persistence.storageClassName }}
{{- fail "temporal.devServer.persistence: set existingClaim or storageClassName, not both (an existing claim has its class already)" }}
{{- end }}
{{- end }}

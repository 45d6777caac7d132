{{/*
Expand the name of the chart.
*/}}
{{- define "shopstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 40 chars: the longest name derived from it, <fullname>-controller-leader-election,
must stay within 63 characters. If the release name contains the chart name it is used as the
full name (release `shopstream` -> `shopstream`).
*/}}
{{- define "shopstream.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "shopstream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels. `app.kubernetes.io/part-of: shopstream` is also what Kafka's NetworkPolicy lets in.
*/}}
{{- define "shopstream.labels" -}}
helm.sh/chart: {{ include "shopstream.chart" . }}
{{ include "shopstream.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shopstream
{{- end }}

{{/*
Selector labels
*/}}
{{- define "shopstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shopstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels and selector labels of one component: (dict "context" $ "component" "kafka").
*/}}
{{- define "shopstream.componentLabels" -}}
{{ include "shopstream.labels" .context }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "shopstream.componentSelectorLabels" -}}
{{ include "shopstream.selectorLabels" .context }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "shopstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-controller" (include "shopstream.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the controller's Deployment and Service: <fullname>-controller.
*/}}
{{- define "shopstream.controller.fullname" -}}
{{- printf "%s-controller" (include "shopstream.fullname" .) }}
{{- end }}

{{/*
Name of cluster-scoped objects (ClusterRole, ClusterRoleBinding): two releases of the same
name in different namespaces must not share them, so the namespace is part of the name.
*/}}
{{- define "shopstream.controller.clusterName" -}}
{{- printf "%s-%s-controller" .Release.Namespace (include "shopstream.fullname" .) }}
{{- end }}

{{/*
Name of Kafka's StatefulSet and headless Service: <fullname>-kafka.
*/}}
{{- define "shopstream.kafka.fullname" -}}
{{- printf "%s-kafka" (include "shopstream.fullname" .) }}
{{- end }}

{{/*
Kafka's bootstrap address, as the controller, the pipelines' Pods (in any namespace) and the
test Pod reach it: the chart's broker by its headless Service's cluster-wide DNS name, or the
external `kafka.bootstrapServers`.
*/}}
{{- define "shopstream.kafka.bootstrapServers" -}}
{{- if .Values.kafka.enabled }}
{{- printf "%s.%s.svc.%s:9092" (include "shopstream.kafka.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- else if .Values.kafka.bootstrapServers }}
{{- .Values.kafka.bootstrapServers }}
{{- else }}
{{- fail "kafka.bootstrapServers is required when kafka.enabled=false: set kafka.bootstrapServers to the host:port of your Kafka (>= 3.x, with transactions), e.g. --set kafka.bootstrapServers=my-cluster-kafka-bootstrap.kafka:9092, or keep kafka.enabled=true" }}
{{- end }}
{{- end }}

{{/*
Tag of the pipelines' images.
*/}}
{{- define "shopstream.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/*
The controller's image (also the `helm test` image: it carries shopctl).
*/}}
{{- define "shopstream.controller.image" -}}
{{- $tag := .Values.controller.image.tag | default .Values.image.tag | default .Chart.AppVersion }}
{{- printf "%s:%s" .Values.controller.image.repository $tag }}
{{- end }}

{{/*
The restricted Pod Security Standard, pod level, for uid/gid `.`
*/}}
{{- define "shopstream.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
The restricted Pod Security Standard, container level.
*/}}
{{- define "shopstream.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
{{- end }}

{{/*
The rules of the controller's pipeline permissions (deploy/controller/rbac.yaml; a test in
crates/shop-chart keeps them equal).
*/}}
{{- define "shopstream.controller.pipelineRules" -}}
# Watch pipelines and write their status (server-side apply on the status subresource).
- apiGroups: ["shopstream.dev"]
  resources: ["shoppipelines"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["shopstream.dev"]
  resources: ["shoppipelines/status"]
  verbs: ["get", "patch"]
# The pipelines' Deployments: server-side apply (patch) and the owns() watch. No delete:
# deleted pipelines' Deployments go by garbage collection through owner references.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Events on ShopPipelines (changes and errors).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* The chart's name, or nameOverride. */}}
{{- define "taskpod.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name: fullnameOverride, else "<release>-<name>" (just the release name when it already
contains the chart's name). At most 55 characters, so that "<fullname>-reports" stays a DNS label.
*/}}
{{- define "taskpod.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 55 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 55 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 55 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* name-version, for the helm.sh/chart label. */}}
{{- define "taskpod.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. Never app.kubernetes.io/managed-by: taskpod (the workspaces' label). */}}
{{- define "taskpod.commonLabels" -}}
helm.sh/chart: {{ include "taskpod.chart" . }}
app.kubernetes.io/name: {{ include "taskpod.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: taskpod
{{- end }}

{{/* Labels of the operator's objects. */}}
{{- define "taskpod.labels" -}}
{{ include "taskpod.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The labels that select the operator's pods (Deployment, Services, NetworkPolicy). */}}
{{- define "taskpod.selectorLabels" -}}
app.kubernetes.io/name: {{ include "taskpod.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "taskpod.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "taskpod.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image, tag defaulting to the appVersion. */}}
{{- define "taskpod.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The watched namespaces, as a JSON list (mode namespaces; empty in mode all). */}}
{{- define "taskpod.watchedNamespaces" -}}
{{- if eq .Values.watch.mode "namespaces" }}
{{- .Values.watch.namespaces | uniq | toJson }}
{{- else }}
{{- list | toJson }}
{{- end }}
{{- end }}

{{/*
Where a per-namespace object goes (TaskTemplates, NetworkPolicies), as a JSON list: the feature's own
`namespaces` (a string or a list) when set, else the watched namespaces (mode namespaces), else the
release namespace. Call with (dict "root" $ "namespaces" .Values.x.namespaces).
*/}}
{{- define "taskpod.targetNamespaces" -}}
{{- $own := .namespaces }}
{{- if kindIs "string" $own }}{{ $own = list $own }}{{ end }}
{{- $own = compact (default (list) $own) }}
{{- if $own }}
{{- $own | uniq | toJson }}
{{- else if eq .root.Values.watch.mode "namespaces" }}
{{- .root.Values.watch.namespaces | uniq | toJson }}
{{- else }}
{{- list .root.Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{/* The report endpoint's URL, as workspaces reach it. */}}
{{- define "taskpod.reportUrl" -}}
{{- printf "http://%s-reports.%s.svc:%d/report" (include "taskpod.fullname" .) .Release.Namespace (int .Values.reports.port) }}
{{- end }}

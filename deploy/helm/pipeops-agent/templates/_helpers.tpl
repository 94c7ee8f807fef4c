{{/* The chart's name, or nameOverride. */}}
{{- define "pipeops-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: fullnameOverride, else the release
name when it already contains the chart's name, else "release-chart".
Cluster-scoped objects (ClusterRole, ClusterRoleBinding) carry it too, so
two releases never share them.
*/}}
{{- define "pipeops-agent.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "pipeops-agent.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pipeops-agent.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pipeops-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pipeops-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pipeops-agent.labels" -}}
helm.sh/chart: {{ include "pipeops-agent.chart" . }}
{{ include "pipeops-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: agent
app.kubernetes.io/part-of: pipeops
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "pipeops-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pipeops-agent.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false: the existing ServiceAccount the agent runs as" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the token, and its key. */}}
{{- define "pipeops-agent.tokenSecretName" -}}
{{- if .Values.agent.pipeops.existingSecret }}
{{- .Values.agent.pipeops.existingSecret }}
{{- else }}
{{- include "pipeops-agent.fullname" . }}-token
{{- end }}
{{- end }}

{{- define "pipeops-agent.tokenSecretKey" -}}
{{- if .Values.agent.pipeops.existingSecret }}
{{- required "agent.pipeops.existingSecretKey must name the key of the token in agent.pipeops.existingSecret" .Values.agent.pipeops.existingSecretKey }}
{{- else -}}
token
{{- end }}
{{- end }}

{{/*
Checks with a clear message, included by the Deployment, which every install
renders. values.schema.json refuses the same values first (helm lint reports
a template's fail only as [INFO] and passes); these messages are what
--skip-schema-validation gets.
*/}}
{{- define "pipeops-agent.validate" -}}
{{- $p := .Values.agent.pipeops }}
{{- if and $p.token $p.existingSecret }}
{{- fail "set only one of agent.pipeops.token and agent.pipeops.existingSecret" }}
{{- end }}
{{- if not (or $p.token $p.existingSecret) }}
{{- fail "agent.pipeops.token is required: the agent token from `pipeops-controlplane cluster create` (--set agent.pipeops.token=...), or agent.pipeops.existingSecret naming a Secret that holds it" }}
{{- end }}
{{- if not (regexMatch "^https?://[^/?#\\s]+(/[^?#\\s]*)?$" $p.apiUrl) }}
{{- fail (printf "agent.pipeops.apiUrl=%q must be an http(s) URL, e.g. https://api.pipeops.io" $p.apiUrl) }}
{{- end }}
{{- $own := include "pipeops-agent.labels" . | fromYaml }}
{{- range $k, $_ := .Values.podLabels }}
{{- if hasKey $own $k }}
{{- fail (printf "podLabels may not set %s: the chart sets it, and selects the pod by it" $k) }}
{{- end }}
{{- end }}
{{- if not (.Values.podSecurityContext | default dict).fsGroup }}
{{- fail "podSecurityContext.fsGroup is required: the agent token is mounted as a file (mode 0440) readable by that group" }}
{{- end }}
{{- end }}

{{/* The chart's name, or nameOverride. */}}
{{- define "pipeops-server.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: fullnameOverride, else the release
name when it already contains the chart's name, else "release-chart". It
is cut to 40 characters, so that the longest suffix
("-controlplane-metrics") still fits a 63-character name.
*/}}
{{- define "pipeops-server.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := include "pipeops-server.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pipeops-server.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Names of each component's objects. */}}
{{- define "pipeops-server.controlplane" -}}
{{- include "pipeops-server.fullname" . }}-controlplane
{{- end }}
{{- define "pipeops-server.gateway" -}}
{{- include "pipeops-server.fullname" . }}-gateway
{{- end }}
{{- define "pipeops-server.postgresql" -}}
{{- include "pipeops-server.fullname" . }}-postgresql
{{- end }}

{{/*
Selector labels of one component: call with (list $ "gateway").
*/}}
{{- define "pipeops-server.selectorLabels" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ include "pipeops-server.name" $ }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "pipeops-server.labels" -}}
{{- $ := index . 0 -}}
helm.sh/chart: {{ include "pipeops-server.chart" $ }}
{{ include "pipeops-server.selectorLabels" . }}
app.kubernetes.io/version: {{ $.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: pipeops
app.kubernetes.io/managed-by: {{ $.Release.Service }}
{{- end }}

{{- define "pipeops-server.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pipeops-server.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false: the existing ServiceAccount the pods run as" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Secrets: the chart's own names, or the ones the user gave. */}}
{{- define "pipeops-server.databaseSecret" -}}
{{- default (printf "%s-database" (include "pipeops-server.fullname" .)) .Values.database.existingSecret }}
{{- end }}
{{- define "pipeops-server.kekSecret" -}}
{{- default (printf "%s-kek" (include "pipeops-server.fullname" .)) .Values.controlplane.keyEncryptionKey.existingSecret }}
{{- end }}
{{- define "pipeops-server.peerSecret" -}}
{{- default (printf "%s-peer" (include "pipeops-server.fullname" .)) .Values.gateway.peer.existingSecret }}
{{- end }}

{{/*
Whether the database password comes from a file: a password the chart
keeps (bundled PostgreSQL, database.password) or one in existingSecret;
not when existingSecretUrlKey hands over the whole URL.
*/}}
{{- define "pipeops-server.databasePasswordFile" -}}
{{- if not .Values.database.existingSecretUrlKey }}true{{ end }}
{{- end }}

{{/* Where the secret files are mounted in the pods. */}}
{{- define "pipeops-server.secretsDir" -}}
/run/secrets/pipeops
{{- end }}

{{/*
The environment both components read the database from. The password is a
file, never a variable: the processes of a container, and `kubectl
describe`, see variables.
*/}}
{{- define "pipeops-server.databaseEnv" -}}
{{- $db := .Values.database }}
{{- if $db.existingSecretUrlKey }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $db.existingSecret }}
      key: {{ $db.existingSecretUrlKey }}
{{- else }}
- name: DATABASE_URL
  value: {{ include "pipeops-server.databaseUrl" . | quote }}
- name: DATABASE_PASSWORD_FILE
  value: {{ include "pipeops-server.secretsDir" . }}/database/password
{{- end }}
{{- end }}

{{- define "pipeops-server.databaseUrl" -}}
{{- if .Values.postgresql.enabled }}
{{- printf "postgres://pipeops@%s:5432/pipeops?sslmode=disable" (include "pipeops-server.postgresql" .) }}
{{- else }}
{{- .Values.database.url }}
{{- end }}
{{- end }}

{{/*
Secret volumes are mounted 0440 (read for owner and group): the components
refuse a secret file that every user may read. fsGroup gives the group.
*/}}
{{- define "pipeops-server.databaseVolume" -}}
{{- if include "pipeops-server.databasePasswordFile" . }}
- name: database
  secret:
    secretName: {{ include "pipeops-server.databaseSecret" . }}
    defaultMode: 288 # 0440
    items:
      - key: {{ ternary .Values.database.existingSecretPasswordKey "password" (ne .Values.database.existingSecret "") }}
        path: password
{{- end }}
{{- end }}

{{- define "pipeops-server.databaseMount" -}}
{{- if include "pipeops-server.databasePasswordFile" . }}
- name: database
  mountPath: {{ include "pipeops-server.secretsDir" . }}/database
  readOnly: true
{{- end }}
{{- end }}

{{/*
A Secret's value that stays what it was: the one in the cluster when the
Secret exists (so an upgrade keeps it), else a new one. Call with (list $
secretName key newValue). helm template and --dry-run see no cluster and
always make a new one.
*/}}
{{- define "pipeops-server.keptSecretValue" -}}
{{- $ := index . 0 -}}
{{- $existing := lookup "v1" "Secret" $.Release.Namespace (index . 1) }}
{{- if and $existing (hasKey ($existing.data | default dict) (index . 2)) }}
{{- index $existing.data (index . 2) }}
{{- else }}
{{- index . 3 | b64enc }}
{{- end }}
{{- end }}

{{/* The public scheme of the gateway: what agents and kubeconfigs use. */}}
{{- define "pipeops-server.gatewayWsUrl" -}}
{{- if .Values.controlplane.gatewayWsUrl }}
{{- .Values.controlplane.gatewayWsUrl }}
{{- else }}
{{- printf "%s://%s/ws" (ternary "ws" "wss" (eq .Values.gateway.tls.mode "none")) (first .Values.gateway.hosts) }}
{{- end }}
{{- end }}

{{- define "pipeops-server.gatewayUrl" -}}
{{- if .Values.controlplane.gatewayUrl }}
{{- .Values.controlplane.gatewayUrl }}
{{- else }}
{{- printf "%s://%s" (ternary "http" "https" (eq .Values.gateway.tls.mode "none")) (first .Values.gateway.hosts) }}
{{- end }}
{{- end }}

{{- define "pipeops-server.podLabelsCheck" -}}
{{- $ := index . 0 -}}
{{- $component := index . 1 }}
{{- $own := include "pipeops-server.labels" (list $ $component) | fromYaml }}
{{- range $k, $_ := index . 2 }}
{{- if hasKey $own $k }}
{{- fail (printf "%s.podLabels may not set %s: the chart sets it, and selects the pod by it" $component $k) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Checks with a clear message, included by both Deployments. values.schema.json
refuses the same values first where it can (helm lint reports a template's
fail only as [INFO] and passes); these messages are what
--skip-schema-validation gets, and what the schema cannot say: the checks
that compare two values.
*/}}
{{- define "pipeops-server.validate" -}}
{{- $db := .Values.database }}
{{- $gw := .Values.gateway }}
{{- $cp := .Values.controlplane }}
{{- if .Values.postgresql.enabled }}
{{- if or $db.url $db.existingSecret $db.existingSecretUrlKey }}
{{- fail "postgresql.enabled runs a bundled PostgreSQL that the chart wires itself: leave database.url, database.existingSecret and database.existingSecretUrlKey empty" }}
{{- end }}
{{- else if $db.existingSecretUrlKey }}
{{- if not $db.existingSecret }}
{{- fail "database.existingSecretUrlKey needs database.existingSecret: the Secret that holds the URL" }}
{{- end }}
{{- if or $db.url $db.password }}
{{- fail "database.existingSecretUrlKey gives the whole URL: leave database.url and database.password empty" }}
{{- end }}
{{- else }}
{{- if not $db.url }}
{{- fail "database.url is required: the PostgreSQL the control plane and the gateways share, postgres://USER@HOST:5432/DB?sslmode=require, with its password in database.password or database.existingSecret (or existingSecret with existingSecretUrlKey holding the whole URL); postgresql.enabled=true runs a bundled one for trying" }}
{{- end }}
{{- if not (regexMatch "^postgres(ql)?://[^/?#:@\\s]+@[^/?#@\\s]+(/[^\\s]*)?$" $db.url) }}
{{- fail "database.url must be postgres://USER@HOST[:PORT]/DB[?...] with a user and no password: the password goes in database.password or database.existingSecret, which the pods read as a file" }}
{{- end }}
{{- if and $db.password $db.existingSecret }}
{{- fail "set only one of database.password and database.existingSecret" }}
{{- end }}
{{- if not (or $db.password $db.existingSecret) }}
{{- fail "database.url needs a password: database.password, or database.existingSecret holding it under database.existingSecretPasswordKey" }}
{{- end }}
{{- end }}
{{- if lt (int $gw.replicas) 1 }}
{{- fail "gateway.replicas must be at least 1: the gateways are the public edge and hold the agents' tunnels" }}
{{- end }}
{{- if lt (int $cp.replicas) 1 }}
{{- fail "controlplane.replicas must be at least 1: agents register and gateways verify tokens with it" }}
{{- end }}
{{- if not (or $cp.gatewayWsUrl $gw.hosts) }}
{{- fail "gateway.hosts is required (the public hosts of the gateways, e.g. [gateway.example.com]), or controlplane.gatewayWsUrl and controlplane.gatewayUrl: where agents open their tunnel" }}
{{- end }}
{{- if and (eq $gw.tls.mode "secret") (not $gw.tls.secretName) }}
{{- fail "gateway.tls.mode secret needs gateway.tls.secretName: a kubernetes.io/tls Secret with the gateway's certificate" }}
{{- end }}
{{- if and (eq $gw.tls.mode "acme") (gt (int $gw.replicas) 1) (not $gw.tls.acme.existingClaim) }}
{{- fail "gateway.tls.mode acme with more than one gateway needs gateway.tls.acme.existingClaim: a ReadWriteMany PersistentVolumeClaim the gateways share, or a challenge that reaches another gateway fails" }}
{{- end }}
{{- if le (int $gw.terminationGracePeriodSeconds) (add $gw.preStopSleepSeconds $gw.shutdownTimeoutSeconds | int) }}
{{- fail (printf "gateway.terminationGracePeriodSeconds=%d must be more than gateway.preStopSleepSeconds + gateway.shutdownTimeoutSeconds (%d), or the kubelet kills a gateway while it still drains" (int $gw.terminationGracePeriodSeconds) (add $gw.preStopSleepSeconds $gw.shutdownTimeoutSeconds | int)) }}
{{- end }}
{{- if le (int $cp.terminationGracePeriodSeconds) (int $cp.shutdownTimeoutSeconds) }}
{{- fail (printf "controlplane.terminationGracePeriodSeconds=%d must be more than controlplane.shutdownTimeoutSeconds (%d), or the kubelet kills the control plane while it still drains" (int $cp.terminationGracePeriodSeconds) (int $cp.shutdownTimeoutSeconds)) }}
{{- end }}
{{- include "pipeops-server.podLabelsCheck" (list . "controlplane" $cp.podLabels) }}
{{- include "pipeops-server.podLabelsCheck" (list . "gateway" $gw.podLabels) }}
{{- end }}

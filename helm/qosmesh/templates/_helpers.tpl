{{/* Names, labels and the settings the chart derives; shared by every template. */}}

{{- define "qosmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "qosmesh.fullname" -}}
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

{{- define "qosmesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "qosmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qosmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "qosmesh.labels" -}}
helm.sh/chart: {{ include "qosmesh.chart" . }}
{{ include "qosmesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: service
app.kubernetes.io/part-of: qosmesh
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "qosmesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "qosmesh.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "qosmesh.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "qosmesh.port" -}}
{{- .Values.config.APP_PORT | default 8000 | int }}
{{- end }}

{{/* The bundled NATS chart's client Service, named as that chart names it. */}}
{{- define "qosmesh.natsService" -}}
{{- if .Values.nats.fullnameOverride }}
{{- .Values.nats.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "nats" .Values.nats.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "qosmesh.natsUrl" -}}
{{- if .Values.nats.enabled }}
{{- printf "nats://%s.%s.svc:4222" (include "qosmesh.natsService" .) .Release.Namespace }}
{{- else if .Values.externalNats.url }}
{{- .Values.externalNats.url }}
{{- else }}
{{- fail "NATS: enable the bundled cluster (nats.enabled=true) or set externalNats.url; the image has no embedded nats-server" }}
{{- end }}
{{- end }}

{{/* APP_REPLICAS: as given, else the bundled cluster's node count (at most 5), else 1. */}}
{{- define "qosmesh.streamReplicas" -}}
{{- if .Values.config.APP_REPLICAS }}
{{- .Values.config.APP_REPLICAS | int }}
{{- else if and .Values.nats.enabled .Values.nats.config.cluster.enabled }}
{{- min 5 (.Values.nats.config.cluster.replicas | default 3 | int) }}
{{- else }}
{{- 1 }}
{{- end }}
{{- end }}

{{- define "qosmesh.secretName" -}}
{{- default (include "qosmesh.fullname" .) .Values.existingSecret }}
{{- end }}

{{/* True (non-empty) when the pod reads a Secret: the chart's own or an existing one. */}}
{{- define "qosmesh.hasSecret" -}}
{{- if or .Values.existingSecret (include "qosmesh.secretData" .) }}true{{ end }}
{{- end }}

{{- define "qosmesh.secretData" -}}
{{- if not .Values.existingSecret }}
{{- range $key, $value := .Values.secrets }}
{{- if $value }}
{{ $key }}: {{ $value | toString | b64enc | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* True (non-empty) when the pods get a database URL, from whichever source. */}}
{{- define "qosmesh.hasDatabase" -}}
{{- if or .Values.secrets.APP_DATABASE_URL .Values.existingSecret .Values.cloudnativepg.enabled }}true{{ end }}
{{- end }}

{{/* The CloudNativePG Cluster (cloudnativepg); the operator refuses names over 50 characters. */}}
{{- define "qosmesh.cnpgCluster" -}}
{{- printf "%s-db" (include "qosmesh.fullname" . | trunc 47 | trimSuffix "-") -}}
{{- end }}

{{/* APP_DATABASE_URL from the Secret CloudNativePG writes for that Cluster (<cluster>-app,
     key `uri`); env, so it wins over a key of the same name in existingSecret. */}}
{{- define "qosmesh.databaseEnv" -}}
{{- if .Values.cloudnativepg.enabled -}}
- name: APP_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "qosmesh.cnpgCluster" . }}-app
      key: uri
{{- end }}
{{- end }}

{{/* Refuse values that would start pods bound to fail. */}}
{{- define "qosmesh.validate" -}}
{{- $drain := .Values.config.APP_DRAIN_TIMEOUT | default 20 | float64 }}
{{- $needed := addf $drain .Values.preStopSleepSeconds }}
{{- if le (.Values.terminationGracePeriodSeconds | float64) $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed preStopSleepSeconds + APP_DRAIN_TIMEOUT (%v), or Kubernetes kills pods mid-drain" .Values.terminationGracePeriodSeconds $needed) }}
{{- end }}
{{- $usesRedis := false }}
{{- range $key := list "APP_QOS0_TRANSPORT" "APP_QOS1_TRANSPORT" "APP_QOS2_TRANSPORT" }}
{{- if eq (get $.Values.config $key | default "") "redis" }}{{ $usesRedis = true }}{{ end }}
{{- end }}
{{- if and $usesRedis (not .Values.secrets.APP_REDIS_URL) (not .Values.existingSecret) }}
{{- fail "a QoS level uses the redis transport: set secrets.APP_REDIS_URL (or existingSecret); the image has no embedded Valkey" }}
{{- end }}
{{- if and .Values.database.required (not (include "qosmesh.hasDatabase" .)) }}
{{- fail "no database configured: the service keeps data in PostgreSQL (the example does) and the image has none embedded. Either set secrets.APP_DATABASE_URL (or existingSecret) to a PostgreSQL of your own, or set cloudnativepg.enabled=true for a cluster run by the CloudNativePG operator (installed in the cluster first); database.required=false for a domain without a database (docs/deploy.md)" }}
{{- end }}
{{- if and .Values.cloudnativepg.enabled .Values.secrets.APP_DATABASE_URL }}
{{- fail "set secrets.APP_DATABASE_URL or cloudnativepg.enabled, not both: with cloudnativepg the URL comes from the Secret the operator writes" }}
{{- end }}
{{- if .Values.natsUsers.enabled }}
{{- if not .Values.nats.enabled }}
{{- fail "natsUsers configures the bundled NATS cluster (nats.enabled=true); for another NATS, give its operator the block `python -m app nats-permissions` prints" }}
{{- end }}
{{- if or .Values.existingSecret (not .Values.secrets.APP_NATS_PASSWORD) }}
{{- fail "natsUsers: set secrets.APP_NATS_PASSWORD (not existingSecret): the chart writes it into the cluster's users file as well" }}
{{- end }}
{{- if not .Values.natsUsers.permissions }}
{{- fail "natsUsers: set natsUsers.permissions as `python -m app nats-permissions --format helm` prints them" }}
{{- end }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both" }}
{{- end }}
{{- end }}

{{/* A value as an environment string: whole numbers without exponent, maps and lists as JSON. */}}
{{- define "qosmesh.envValue" -}}
{{- if kindIs "float64" . }}
{{- if eq . (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if or (kindIs "map" .) (kindIs "slice" .) }}
{{- toJson . }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}

{{- define "qosmesh.natsCredsDir" -}}/etc/qosmesh/nats-creds{{- end }}
{{- define "qosmesh.natsTlsDir" -}}/etc/qosmesh/nats-tls{{- end }}
{{- define "qosmesh.dataDir" -}}/var/lib/qosmesh{{- end }}

{{/* The service name instances register under (APP_SERVICE_NAME). */}}
{{- define "qosmesh.serviceName" -}}
{{- .Values.config.APP_SERVICE_NAME | default "qosmesh" -}}
{{- end }}

{{/* The label matchers that select this release's series, as the ServiceMonitor makes them. */}}
{{- define "qosmesh.alertSelector" -}}
namespace="{{ .Release.Namespace }}", job="{{ include "qosmesh.fullname" . }}"
{{- end }}

{{/* The NATS user the service connects as on the bundled cluster (natsUsers). */}}
{{- define "qosmesh.natsUser" -}}
{{- .Values.natsUsers.user | default (include "qosmesh.serviceName" .) -}}
{{- end }}

{{/* The Secret the bundled cluster includes its users from; the `nats` values name it alike. */}}
{{- define "qosmesh.natsUsersSecret" -}}
{{- printf "%s-nats-users" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/* users.conf: nats-server configuration (JSON is a subset of it) without the HTML escapes
     of toJson, which nats-server does not read. */}}
{{- define "qosmesh.natsUsersConf" -}}
{{- $own := dict "user" (include "qosmesh.natsUser" .) "password" (toString .Values.secrets.APP_NATS_PASSWORD) "permissions" .Values.natsUsers.permissions }}
{{- $users := prepend .Values.natsUsers.otherUsers $own }}
{{- $json := dict "users" $users | toJson | replace "\\u003c" "<" | replace "\\u003e" ">" | replace "\\u0026" "&" -}}
# The bundled cluster's users, written by the qosmesh chart (natsUsers); included by nats.conf.
authorization: {{ $json }}
{{ end }}

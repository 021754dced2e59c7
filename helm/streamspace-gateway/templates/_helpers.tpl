{{/* Chart name, truncated to a DNS label. */}}
{{- define "streamspace-gateway.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource name: fullnameOverride, else the release name with the chart name appended unless already in it. */}}
{{- define "streamspace-gateway.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "streamspace-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamspace-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "streamspace-gateway.labels" -}}
{{ include "streamspace-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: streamspace
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "streamspace-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The Secret with the connection URLs: this chart's existingSecret, else the umbrella's global one, else chart-made. */}}
{{- define "streamspace-gateway.connectionSecret" -}}
{{- $global := dig "connection" "existingSecret" "" (.Values.global | default dict) -}}
{{- .Values.connection.existingSecret | default $global | default (printf "%s-connection" (include "streamspace-gateway.fullname" .)) -}}
{{- end -}}

{{- define "streamspace-gateway.chartMadeSecret" -}}
{{- $global := dig "connection" "existingSecret" "" (.Values.global | default dict) -}}
{{- if not (or .Values.connection.existingSecret $global) -}}true{{- end -}}
{{- end -}}

{{- define "streamspace-gateway.databaseUrlEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "streamspace-gateway.connectionSecret" . }}
      key: {{ .Values.connection.keys.databaseUrl }}
{{- end -}}

{{/* Environment of the gateway container. */}}
{{- define "streamspace-gateway.env" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: PORT
  value: {{ .Values.port | quote }}
# /metrics only on this second port, never on the API port (docs/security.md); 0: no metrics
- name: METRICS_PORT
  value: {{ .Values.metrics.port | quote }}
# agents dial a stream's data WebSocket back to this very pod (docs/streams.md): its own address
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{ include "streamspace-gateway.databaseUrlEnv" . }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "streamspace-gateway.connectionSecret" . }}
      key: {{ .Values.connection.keys.redisUrl }}
- name: HEARTBEAT_INTERVAL
  value: {{ .Values.config.heartbeatInterval | quote }}
- name: LOG_FORMAT
  value: {{ .Values.config.logFormat | quote }}
- name: LOG_LEVEL
  value: {{ .Values.config.logLevel | quote }}
{{- with .Values.config.redisKeyPrefix }}
- name: REDIS_KEY_PREFIX
  value: {{ . | quote }}
{{- end }}
{{- if .Values.authSecret.existingSecret }}
- name: AUTH_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .Values.authSecret.existingSecret }}
      key: {{ .Values.authSecret.key }}
{{- end }}
{{- $deliveryKeys := .Values.deliveryKeys.existingSecret | default (dig "deliveryKeys" "existingSecret" "" (.Values.global | default dict)) }}
{{- if $deliveryKeys }}
- name: DELIVERY_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ $deliveryKeys }}
      key: {{ .Values.deliveryKeys.key }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Chart name, truncated to a DNS label. */}}
{{- define "streamspace-dispatcher.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource name: fullnameOverride, else the release name with the chart name appended unless already in it. */}}
{{- define "streamspace-dispatcher.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "streamspace-dispatcher.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamspace-dispatcher.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "streamspace-dispatcher.labels" -}}
{{ include "streamspace-dispatcher.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: streamspace
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "streamspace-dispatcher.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The Secret with the connection URLs: this chart's existingSecret, else the umbrella's global one, else chart-made. */}}
{{- define "streamspace-dispatcher.connectionSecret" -}}
{{- $global := dig "connection" "existingSecret" "" (.Values.global | default dict) -}}
{{- .Values.connection.existingSecret | default $global | default (printf "%s-connection" (include "streamspace-dispatcher.fullname" .)) -}}
{{- end -}}

{{- define "streamspace-dispatcher.chartMadeSecret" -}}
{{- $global := dig "connection" "existingSecret" "" (.Values.global | default dict) -}}
{{- if not (or .Values.connection.existingSecret $global) -}}true{{- end -}}
{{- end -}}

{{- define "streamspace-dispatcher.databaseUrlEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "streamspace-dispatcher.connectionSecret" . }}
      key: {{ .Values.connection.keys.databaseUrl }}
{{- end -}}

{{/* Environment of the dispatcher container. */}}
{{- define "streamspace-dispatcher.env" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: PORT
  value: {{ .Values.port | quote }}
{{ include "streamspace-dispatcher.databaseUrlEnv" . }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "streamspace-dispatcher.connectionSecret" . }}
      key: {{ .Values.connection.keys.redisUrl }}
- name: RABBITMQ_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "streamspace-dispatcher.connectionSecret" . }}
      key: {{ .Values.connection.keys.rabbitmqUrl }}
- name: LOG_FORMAT
  value: {{ .Values.config.logFormat | quote }}
- name: LOG_LEVEL
  value: {{ .Values.config.logLevel | quote }}
{{- with .Values.config.redisKeyPrefix }}
- name: REDIS_KEY_PREFIX
  value: {{ . | quote }}
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

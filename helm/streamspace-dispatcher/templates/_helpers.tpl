{{/* Chart name, truncated to a DNS label. */}}
{{- define "streamspace-dispatcher.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource name: the release name, with the chart name appended unless already in it. */}}
{{- define "streamspace-dispatcher.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
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
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "streamspace-dispatcher.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "streamspace-dispatcher.connectionSecret" -}}
{{- .Values.connection.existingSecret | default (printf "%s-connection" (include "streamspace-dispatcher.fullname" .)) -}}
{{- end -}}

{{/* Environment of the dispatcher container. */}}
{{- define "streamspace-dispatcher.env" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: PORT
  value: {{ .Values.port | quote }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "streamspace-dispatcher.connectionSecret" . }}
      key: DATABASE_URL
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "streamspace-dispatcher.connectionSecret" . }}
      key: REDIS_URL
- name: RABBITMQ_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "streamspace-dispatcher.connectionSecret" . }}
      key: RABBITMQ_URL
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
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

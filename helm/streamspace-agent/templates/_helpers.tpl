{{/* Chart name, truncated to a DNS label. */}}
{{- define "streamspace-agent.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource name: the release name, with the chart name appended unless already in it. */}}
{{- define "streamspace-agent.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "streamspace-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamspace-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "streamspace-agent.labels" -}}
{{ include "streamspace-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: streamspace
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "streamspace-agent.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The Secret holding AGENT_TOKEN: chart-made when agentToken.value is set, else existingSecret. */}}
{{- define "streamspace-agent.tokenSecret" -}}
{{- if .Values.agentToken.value -}}
{{- printf "%s-token" (include "streamspace-agent.fullname" .) -}}
{{- else -}}
{{- required "set agentToken.existingSecret or agentToken.value" .Values.agentToken.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* Environment of the agent container. */}}
{{- define "streamspace-agent.env" -}}
- name: PORT
  value: {{ .Values.port | quote }}
- name: AGENT_ID
  value: {{ required "agent.id is required" .Values.agent.id | quote }}
- name: AGENT_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "streamspace-agent.tokenSecret" . }}
      key: {{ .Values.agentToken.key }}
- name: AGENT_PLATFORM
  value: {{ .Values.agent.platform | quote }}
{{- if eq .Values.agent.platform "kubernetes" }}
# each session's NetworkPolicy admits these pods alone: this release's agent replicas
- name: KUBERNETES_AGENT_SELECTOR
  value: {{ include "streamspace-agent.selectorLabels" . | replace ": " "=" | replace "\n" "," | quote }}
{{- end }}
- name: AGENT_STATE_DIR
  value: /var/lib/streamspace-agent
- name: AGENT_CONCURRENCY
  value: {{ .Values.agent.concurrency | quote }}
- name: GATEWAY_URLS
  value: {{ tpl (required "agent.gatewayUrls is required" .Values.agent.gatewayUrls) . | quote }}
- name: TUNNEL_NETWORKS
  value: {{ .Values.agent.tunnelNetworks | quote }}
- name: HEARTBEAT_INTERVAL
  value: {{ .Values.config.heartbeatInterval | quote }}
- name: LOG_FORMAT
  value: {{ .Values.config.logFormat | quote }}
- name: LOG_LEVEL
  value: {{ .Values.config.logLevel | quote }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

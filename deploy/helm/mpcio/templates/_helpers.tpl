{{/* Names and labels shared by every resource of the chart. */}}

{{- define "mpcio.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mpcio.fullname" -}}
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

{{- define "mpcio.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "mpcio.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of the worker; the Firehose ingress adds its own component. */}}
{{- define "mpcio.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mpcio.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mpcio.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "mpcio.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "mpcio.fullname" .) }}
{{- end }}

{{/* Customer.io credentials and the /users token from the Secret (the workers only). */}}
{{- define "mpcio.customerioSecretEnv" -}}
{{- $secret := include "mpcio.secretName" . -}}
- name: MPCIO_CUSTOMERIO_SITE_ID
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: {{ .Values.secrets.keys.customerioSiteId }}, optional: true}
- name: MPCIO_CUSTOMERIO_API_KEY
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: {{ .Values.secrets.keys.customerioApiKey }}, optional: true}
- name: MPCIO_SUPPORT_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: {{ .Values.secrets.keys.supportToken }}, optional: true}
{{- end }}

{{/* Kafka SASL credentials from the Secret (optional: only SASL_* protocols use them). */}}
{{- define "mpcio.kafkaSecretEnv" -}}
{{- $secret := include "mpcio.secretName" . -}}
- name: MPCIO_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: {{ .Values.secrets.keys.kafkaSaslUsername }}, optional: true}
- name: MPCIO_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: {{ .Values.secrets.keys.kafkaSaslPassword }}, optional: true}
{{- end }}

{{/* The mask key, for every process that logs (workers and ingress). */}}
{{- define "mpcio.maskKeyEnv" -}}
- name: MPCIO_MASK_KEY
  valueFrom:
    secretKeyRef: {name: {{ include "mpcio.secretName" . }}, key: {{ .Values.secrets.keys.maskKey }}, optional: true}
{{- end }}

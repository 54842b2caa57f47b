{{/* Names ------------------------------------------------------------------------------------ */}}

{{- define "durable.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-durable, or the release name when it already says "durable". */}}
{{- define "durable.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The name of one component's objects: <fullname>-<component>. Call with (list $ "processor"). */}}
{{- define "durable.component.fullname" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s-%s" (include "durable.fullname" $ctx) (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "durable.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels: (list $ "processor") */}}
{{- define "durable.labels" -}}
{{- $ctx := index . 0 -}}
helm.sh/chart: {{ include "durable.chart" $ctx }}
{{ include "durable.selectorLabels" . }}
app.kubernetes.io/version: {{ $ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $ctx.Release.Service }}
app.kubernetes.io/part-of: durable
{{- end }}

{{- define "durable.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "durable.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "durable.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "durable.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference: (list $ .Values.processor.repository) */}}
{{- define "durable.image" -}}
{{- $ctx := index . 0 -}}
{{- $repository := index . 1 -}}
{{- $tag := default $ctx.Chart.AppVersion $ctx.Values.image.tag -}}
{{- if $ctx.Values.image.registry }}
{{- printf "%s/%s:%s" (trimSuffix "/" $ctx.Values.image.registry) $repository $tag }}
{{- else }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}

{{/* NATS ---------------------------------------------------------------------------------------- */}}

{{/* The client Service of the NATS subchart is named like its fullname: <release>-nats, or the
release name when it already says "nats" (the official chart's rule). */}}
{{- define "durable.natsUrl" -}}
{{- if .Values.nats.enabled }}
{{- $name := "nats" -}}
{{- if contains $name .Release.Name }}{{ $name = .Release.Name }}{{ else }}{{ $name = printf "%s-nats" .Release.Name }}{{ end }}
{{- printf "nats://%s.%s.svc:4222" $name .Release.Namespace }}
{{- else }}
{{- required "nats.enabled is false: set externalNats.url to the NATS you run" .Values.externalNats.url }}
{{- end }}
{{- end }}

{{- define "durable.otlpEndpoint" -}}
{{- if .Values.tracing.otlpEndpoint }}
{{- .Values.tracing.otlpEndpoint }}
{{- else if .Values.jaeger.enabled }}
{{- printf "http://%s:%d" (include "durable.component.fullname" (list . "jaeger")) (ternary 4317 4318 (eq .Values.tracing.protocol "grpc")) }}
{{- end }}
{{- end }}

{{/* Environment of every NATS client (processor, scheduler, inspector): (list $ "processor") */}}
{{- define "durable.natsEnv" -}}
{{- $ctx := index . 0 -}}
{{- $auth := $ctx.Values.natsAuth -}}
- name: NATS_URL
  value: {{ include "durable.natsUrl" $ctx | quote }}
- name: DURABLE_SETTINGS_FILE
  value: /etc/durable/settings.toml
- name: DURABLE_NATS_USER
  valueFrom:
    secretKeyRef:
      name: {{ $auth.secretName }}
      key: user
      optional: true
- name: DURABLE_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $auth.secretName }}
      key: password
      optional: true
- name: DURABLE_NATS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $auth.secretName }}
      key: token
      optional: true
{{- if $auth.credsSecret.name }}
- name: DURABLE_NATS_CREDS_FILE
  value: /etc/durable/nats-creds/{{ $auth.credsSecret.key }}
{{- end }}
{{- if $auth.nkeySecret.name }}
- name: DURABLE_NATS_NKEY_SEED_FILE
  value: /etc/durable/nats-nkey/{{ $auth.nkeySecret.key }}
{{- end }}
{{- if $auth.tls.enabled }}
- name: DURABLE_NATS_TLS_CA
  value: /etc/durable/nats-tls/ca.crt
{{- if $auth.tls.clientCertificate }}
- name: DURABLE_NATS_TLS_CERT
  value: /etc/durable/nats-tls/tls.crt
- name: DURABLE_NATS_TLS_KEY
  value: /etc/durable/nats-tls/tls.key
{{- end }}
{{- end }}
{{ include "durable.otelEnv" . }}
{{- end }}

{{/* OpenTelemetry: (list $ "processor") */}}
{{- define "durable.otelEnv" -}}
{{- $ctx := index . 0 -}}
{{- $endpoint := include "durable.otlpEndpoint" $ctx -}}
- name: OTEL_SERVICE_NAME
  value: {{ index . 1 | quote }}
{{- if and $ctx.Values.tracing.enabled $endpoint }}
- name: OTEL_TRACES_EXPORTER
  value: otlp
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ ternary "grpc" "http/protobuf" (eq $ctx.Values.tracing.protocol "grpc") | quote }}
{{- else }}
- name: OTEL_TRACES_EXPORTER
  value: none
{{- end }}
- name: OTEL_METRICS_EXPORTER
  value: none
- name: OTEL_LOGS_EXPORTER
  value: none
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "service.namespace=%s,k8s.namespace.name=%s" $ctx.Release.Name $ctx.Release.Namespace | quote }}
{{- end }}

{{/* A component's own extra environment (a name: value map): .Values.processor.env */}}
{{- define "durable.extraEnv" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* Volumes of every NATS client: the settings, /tmp, and the NATS secrets in use. */}}
{{- define "durable.natsVolumes" -}}
{{- $auth := .Values.natsAuth -}}
- name: settings
  configMap:
    name: {{ include "durable.component.fullname" (list . "settings") }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if $auth.credsSecret.name }}
- name: nats-creds
  secret:
    secretName: {{ $auth.credsSecret.name }}
    defaultMode: 0440
{{- end }}
{{- if $auth.nkeySecret.name }}
- name: nats-nkey
  secret:
    secretName: {{ $auth.nkeySecret.name }}
    defaultMode: 0440
{{- end }}
{{- if $auth.tls.enabled }}
- name: nats-tls
  secret:
    secretName: {{ required "natsAuth.tls.enabled: set natsAuth.tls.secretName" $auth.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "durable.natsVolumeMounts" -}}
{{- $auth := .Values.natsAuth -}}
- name: settings
  mountPath: /etc/durable/settings.toml
  subPath: settings.toml
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if $auth.credsSecret.name }}
- name: nats-creds
  mountPath: /etc/durable/nats-creds
  readOnly: true
{{- end }}
{{- if $auth.nkeySecret.name }}
- name: nats-nkey
  mountPath: /etc/durable/nats-nkey
  readOnly: true
{{- end }}
{{- if $auth.tls.enabled }}
- name: nats-tls
  mountPath: /etc/durable/nats-tls
  readOnly: true
{{- end }}
{{- end }}

{{/* The pod-level fields every Deployment shares. */}}
{{- define "durable.podCommon" -}}
serviceAccountName: {{ include "durable.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Pod metadata: (list $ "processor"); a settings checksum rolls the pods when it changes. */}}
{{- define "durable.podMetadata" -}}
{{- $ctx := index . 0 -}}
labels:
  {{- include "durable.labels" . | nindent 2 }}
  {{- with $ctx.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  checksum/settings: {{ include (print $ctx.Template.BasePath "/configmap.yaml") $ctx | sha256sum }}
  {{- with $ctx.Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* A PodDisruptionBudget: (list $ "processor" .Values.processor) */}}
{{- define "durable.pdb" -}}
{{- $ctx := index . 0 -}}
{{- $component := index . 1 -}}
{{- $values := index . 2 -}}
{{- if and $values.enabled $values.pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "durable.component.fullname" (list $ctx $component) }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "durable.labels" (list $ctx $component) | nindent 4 }}
spec:
  maxUnavailable: {{ $values.pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "durable.selectorLabels" (list $ctx $component) | nindent 6 }}
{{- end }}
{{- end }}

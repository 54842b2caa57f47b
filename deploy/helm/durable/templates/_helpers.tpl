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

{{/* An image reference: (list $ .Values.processor.image). The component's tag, else the global
one, else the appVersion: a processor with your plugins can have a tag of its own. */}}
{{- define "durable.image" -}}
{{- $ctx := index . 0 -}}
{{- $image := index . 1 -}}
{{- $tag := $image.tag | default $ctx.Values.image.tag | default $ctx.Chart.AppVersion -}}
{{- if $ctx.Values.image.registry }}
{{- printf "%s/%s:%s" (trimSuffix "/" $ctx.Values.image.registry) $image.repository $tag }}
{{- else }}
{{- printf "%s:%s" $image.repository $tag }}
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

{{/* The Secret with the NATS login: natsAuth.secretName, else <release>-nats-auth (the name the
bundled NATS chart reads through its own $tplYaml, see values.yaml). */}}
{{- define "durable.natsAuthSecret" -}}
{{- .Values.natsAuth.secretName | default (printf "%s-nats-auth" .Release.Name) }}
{{- end }}

{{/* Refuse values that would deploy something broken, each with what to do instead. */}}
{{- define "durable.checkValues" -}}
{{- $auth := .Values.natsAuth -}}
{{- if and $auth.create (not $auth.password) }}
{{- fail "natsAuth.password is empty: set the NATS password (--set natsAuth.password=...), or set natsAuth.create=false and create the Secret yourself (keys user, password). The chart makes no random password: it would change on every render (helm template, Argo CD, Tilt)." }}
{{- end }}
{{- if and .Values.inspector.enabled .Values.inspector.auth.enabled (not .Values.inspector.auth.existingSecret) (not .Values.inspector.auth.token) }}
{{- fail "inspector.auth.token is empty: set the inspector's token (--set inspector.auth.token=...), or inspector.auth.existingSecret to a Secret with the key token. The chart makes no random token: it would change on every render." }}
{{- end }}
{{- if .Values.nats.enabled }}
{{- if $auth.token }}
{{- fail "natsAuth.token works only with a NATS you run (nats.enabled=false): the bundled NATS authenticates natsAuth.user with its password, and NATS cannot take a token and users at once." }}
{{- end }}
{{- if $auth.create }}
{{- range $key := list "user" "password" }}
{{- if contains "'" (toString (get $auth $key)) }}
{{- fail (printf "natsAuth.%s contains a ' (single quote): the bundled NATS reads the login from its configuration, single-quoted, where a ' cannot appear. Choose one without it." $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- $secret := include "durable.natsAuthSecret" . }}
{{- range $variable := list "DURABLE_NATS_USER" "DURABLE_NATS_PASSWORD" }}
{{- $ref := dig $variable "valueFrom" "secretKeyRef" "name" "" $.Values.nats.container.env }}
{{- if kindIs "map" $ref }}{{ $ref = tpl (get $ref "$tplYaml") $ | trim }}{{ end }}
{{- if ne $ref $secret }}
{{- fail (printf "the bundled NATS reads %s from the Secret %q (nats.container.env.%s) but the services from %q (natsAuth.secretName): make them the same" $variable $ref $variable $secret) }}
{{- end }}
{{- end }}
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
{{- /* A Secret the chart makes, or the bundled NATS reads, must be there: a wrong name stops the
pod (CreateContainerConfigError) instead of starting it without a password. */}}
{{- $required := or $auth.create $ctx.Values.nats.enabled }}
- name: DURABLE_NATS_USER
  valueFrom:
    secretKeyRef:
      name: {{ include "durable.natsAuthSecret" $ctx }}
      key: user
      optional: {{ not $required }}
- name: DURABLE_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "durable.natsAuthSecret" $ctx }}
      key: password
      optional: {{ not $required }}
- name: DURABLE_NATS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "durable.natsAuthSecret" $ctx }}
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
  value: {{ $ctx.Values.tracing.protocol | quote }}
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

{{/* Pod metadata: (list $ "processor") or, for a pod Prometheus scrapes, (list $ "processor"
metricsPort). Checksums of the settings and of the chart's Secrets roll the pods when they change. */}}
{{- define "durable.podMetadata" -}}
{{- $ctx := index . 0 -}}
labels:
  {{- include "durable.labels" (list $ctx (index . 1)) | nindent 2 }}
  {{- with $ctx.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  checksum/settings: {{ include (print $ctx.Template.BasePath "/configmap.yaml") $ctx | sha256sum }}
  checksum/secrets: {{ include (print $ctx.Template.BasePath "/secret.yaml") $ctx | sha256sum }}
  {{- if and (gt (len .) 2) $ctx.Values.metrics.podAnnotations }}
  prometheus.io/scrape: "true"
  prometheus.io/port: {{ index . 2 | quote }}
  prometheus.io/path: /metrics
  {{- end }}
  {{- with $ctx.Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* Topology spread of one component's pods: (list $ "processor" .Values.processor.topologySpreadConstraints),
a map of topologyKey to constraint, as the NATS chart takes it. */}}
{{- define "durable.topologySpread" -}}
{{- $ctx := index . 0 -}}
{{- $component := index . 1 -}}
{{- with index . 2 -}}
topologySpreadConstraints:
{{- range $key, $constraint := . }}
  {{- $selector := dict "matchLabels" (include "durable.selectorLabels" (list $ctx $component) | fromYaml) }}
  - {{ mergeOverwrite (dict "topologyKey" $key "labelSelector" $selector "matchLabelKeys" (list "pod-template-hash")) $constraint | toYaml | indent 4 | trim }}
{{- end }}
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

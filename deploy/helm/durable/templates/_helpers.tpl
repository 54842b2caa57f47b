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
{{- /* The processor's termination grace period against its drain: after SIGTERM it waits
shutdown_grace for in-flight executions, then hands the rest back and leaves (up to 25 s more),
and a step stuck in a thread holds its command until the heartbeats it stopped run out (ack_wait
after the last one). Each value as the processor reads it: its env, else settings, else its
built-in default. */}}
{{- $p := .Values.processor }}
{{- if $p.enabled }}
{{- $read := dict "shutdown_grace" 10 "ack_wait" 30 "heartbeat" 0 }}
{{- range $key := keys $read }}
{{- if hasKey $.Values.settings $key }}{{ $_ := set $read $key (get $.Values.settings $key) }}{{ end }}
{{- $variable := printf "DURABLE_%s" (upper $key) }}
{{- if and $p.env (hasKey $p.env $variable) }}{{ $_ := set $read $key (get $p.env $variable) }}{{ end }}
{{- end }}
{{- $grace := float64 $read.shutdown_grace }}
{{- $ack := float64 $read.ack_wait }}
{{- $beat := float64 $read.heartbeat }}
{{- if le $beat 0.0 }}{{ $beat = divf $ack 6 }}{{ end }}
{{- $period := float64 $p.terminationGracePeriodSeconds }}
{{- $low := addf $grace 25 }}
{{- $high := subf (addf $grace $ack) $beat }}
{{- if lt $period $low }}
{{- fail (printf "processor.terminationGracePeriodSeconds (%v) must be at least settings.shutdown_grace + 25 (%v): after SIGTERM the processor waits shutdown_grace (%v s) for in-flight executions, then takes up to 25 s more to hand the rest back and leave, and Kubernetes kills it when the period ends. Raise the period (and below settings.shutdown_grace + ack_wait - heartbeat, %v), or lower settings.shutdown_grace." $period $low $grace $high) }}
{{- end }}
{{- if ge $period $high }}
{{- fail (printf "processor.terminationGracePeriodSeconds (%v) must be below settings.shutdown_grace + ack_wait - heartbeat (%v + %v - %v = %v): a step stuck in a thread keeps running until the pod is killed, while its command is redelivered to another processor ack_wait after the last heartbeat. Lower the period (at least shutdown_grace + 25 = %v), or raise settings.ack_wait." $period $grace $ack $beat $high $low) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Settings only the processor reads: processor.toml has them, the shared settings.toml not
(the scheduler reads ack_wait, max_concurrent, shutdown_grace and consumer with meanings,
defaults and limits of its own: its knobs are scheduler.env, DURABLE_ACK_WAIT and so on). */}}
{{- define "durable.processorSettings" -}}
{{- list "max_concurrent" "ack_wait" "heartbeat" "shutdown_grace" "lease_ttl" "consumer" "processor_id" "services" "load_plugins" "default_service_address" "submit_test_command" | toJson }}
{{- end }}

{{/* A settings file from a map: scalar settings first, then one table per map. */}}
{{- define "durable.settingsToml" -}}
{{- range $key, $value := . }}
{{- if not (kindIs "map" $value) }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end }}
{{- range $key, $value := . }}
{{- if kindIs "map" $value }}

[{{ $key }}]
{{- range $name, $item := $value }}
{{ $name | quote }} = {{ toJson $item }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The processor's OTEL_SERVICE_NAME, which the inspector's trace search looks in. */}}
{{- define "durable.processorServiceName" -}}
processor
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

{{/* Mounts of every NATS client: `.`, or (list $ "processor.toml") for another settings file
of the ConfigMap than settings.toml. */}}
{{- define "durable.natsVolumeMounts" -}}
{{- $ctx := . -}}
{{- $file := "settings.toml" -}}
{{- if kindIs "slice" . }}{{ $ctx = index . 0 }}{{ $file = index . 1 }}{{ end -}}
{{- $auth := $ctx.Values.natsAuth -}}
- name: settings
  mountPath: /etc/durable/settings.toml
  subPath: {{ $file }}
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

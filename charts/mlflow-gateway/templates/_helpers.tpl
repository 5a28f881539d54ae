{{/* Names, labels and the few values computed from others. */}}

{{- define "gw.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gw.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "gw.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "gw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: gateway, nginx or redis. Call with (dict "ctx" . "component" "gateway"). */}}
{{- define "gw.selector" -}}
app.kubernetes.io/name: {{ include "gw.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "gw.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gw.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The files the gateway reads: the repository's own (files/ links to them) unless replaced by a value. */}}
{{- define "gw.configYaml" -}}
{{- .Values.config.configYaml | default (.Files.Get "files/config.yaml") -}}
{{- end -}}
{{- define "gw.pricingYaml" -}}
{{- .Values.config.pricingYaml | default (.Files.Get "files/pricing.yaml") -}}
{{- end -}}

{{- define "gw.providerSecret" -}}
{{- .Values.providerKeys.existingSecret | default (printf "%s-provider-keys" (include "gw.fullname" .)) -}}
{{- end -}}

{{- define "gw.clientKeysSecret" -}}
{{- .Values.clientKeys.secretName | default (printf "%s-client-keys" (include "gw.fullname" .)) -}}
{{- end -}}

{{/* Seconds a gateway pod may take to stop: the preStop pause, then gunicorn's graceful drain, then a margin. */}}
{{- define "gw.terminationGrace" -}}
{{- $g := .Values.gateway -}}
{{- $needed := add $g.preStopSeconds $g.gracefulTimeout -}}
{{- if kindIs "invalid" $g.terminationGracePeriodSeconds -}}
{{- add $needed 10 -}}
{{- else if le (int $g.terminationGracePeriodSeconds) (int $needed) -}}
{{- fail (printf "gateway.terminationGracePeriodSeconds=%v must be above gateway.preStopSeconds + gateway.gracefulTimeout = %v, or streams are killed mid-answer on every rollout: raise it, or leave it null" $g.terminationGracePeriodSeconds $needed) -}}
{{- else -}}
{{- $g.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* The headless Service nginx resolves to every ready gateway pod, as Docker's DNS does for a scaled service. */}}
{{- define "gw.gatewayHeadless" -}}
{{- printf "%s-gateway-pods" (include "gw.fullname" .) -}}
{{- end -}}

{{/* GATEWAY_REDIS_URL as the gateway pods and the admin page get it: the bundled Redis, or yours. */}}
{{- define "gw.redisUrlEnv" -}}
- name: GATEWAY_REDIS_URL
{{- if .Values.redis.enabled }}
  value: "redis://{{ include "gw.fullname" . }}-redis:6379/0"
{{- else if .Values.redis.external.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.existingSecretKey }}
{{- else }}
  value: {{ required "redis.external.url (or redis.external.existingSecret) is needed when redis.enabled is false: the replicas share limits through it" .Values.redis.external.url | quote }}
{{- end }}
{{- end -}}

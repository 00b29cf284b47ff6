{{/* Names, labels and the pieces every refind and Ray pod shares. */}}

{{- define "refind.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "refind.fullname" -}}
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

{{/* The RayCluster's name: short enough that KubeRay uses it as is for the head Service
     (<name>-head-svc) and the auth Secret it generates (<name>). */}}
{{- define "refind.rayClusterName" -}}
{{- include "refind.fullname" . | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "refind.rayHeadService" -}}
{{- printf "%s-head-svc" (include "refind.rayClusterName" .) -}}
{{- end -}}

{{- define "refind.rayAuthSecret" -}}
{{- .Values.ray.auth.existingSecret | default (include "refind.rayClusterName" .) -}}
{{- end -}}

{{- define "refind.selectorLabels" -}}
app.kubernetes.io/name: {{ include "refind.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "refind.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "refind.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "refind.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "refind.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "refind.image" -}}
{{- $tag := required "image.tag is required: the tag of the refind image built from helm/Dockerfile" .Values.image.tag -}}
{{- printf "%s:%s" .Values.image.repository (toString $tag) -}}
{{- end -}}

{{- define "refind.rayImage" -}}
{{- $img := .Values.ray.image | default dict -}}
{{- if $img.repository -}}
{{- printf "%s:%s" $img.repository (toString (required "ray.image.tag is required when ray.image.repository is set" $img.tag)) -}}
{{- else -}}
{{- include "refind.image" . -}}
{{- end -}}
{{- end -}}

{{/* The refind config file: `config:` as given, with ray.address pointing at this chart's Ray
     head (Ray Client) unless set. */}}
{{- define "refind.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $ray := deepCopy (get $cfg "ray" | default dict) -}}
{{- if not (get $ray "address") -}}
{{- $_ := set $ray "address" (printf "ray://%s:10001" (include "refind.rayHeadService" .)) -}}
{{- end -}}
{{- $_ := set $cfg "ray" $ray -}}
{{- toYaml $cfg -}}
{{- end -}}

{{- define "refind.configPath" -}}/etc/refind/config.yaml{{- end -}}

{{/* Environment of every refind and Ray container: secrets by reference, extras. */}}
{{- define "refind.env" -}}
{{- range $name, $ref := .Values.secretEnv }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "secretEnv.%s.secretName is required" $name) $ref.secretName }}
      key: {{ required (printf "secretEnv.%s.key is required" $name) $ref.key }}
{{- end }}
- name: HOME
  value: /tmp
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Ray token auth for the Ray containers and the driver (`refind serve`), not the API. */}}
{{- define "refind.rayAuthEnv" -}}
{{- if .Values.ray.auth.enabled }}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "refind.rayAuthSecret" . }}
      key: auth_token
{{- else }}
- name: RAY_AUTH_MODE
  value: disabled
{{- end }}
{{- end -}}

{{- define "refind.raySecurityContext" -}}
{{- toYaml (set (deepCopy .Values.securityContext) "readOnlyRootFilesystem" .Values.ray.readOnlyRootFilesystem) -}}
{{- end -}}

{{- define "refind.dataVolume" -}}
- name: data
  persistentVolumeClaim:
    claimName: {{ .Values.persistence.existingClaim | default (printf "%s-data" (include "refind.fullname" .)) }}
{{- end -}}

{{/* Volumes of the refind pods (serve, api): config, shared data, a writable /tmp. */}}
{{- define "refind.volumes" -}}
- name: config
  configMap:
    name: {{ include "refind.fullname" . }}-config
{{ include "refind.dataVolume" . }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "refind.volumeMounts" -}}
- name: config
  mountPath: {{ include "refind.configPath" . }}
  subPath: config.yaml
  readOnly: true
- name: data
  mountPath: {{ .Values.config.data_dir }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Probes on /healthz of the container port named `http` (serve and api). */}}
{{- define "refind.probes" -}}
{{- $p := .Values.probes -}}
startupProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: {{ $p.periodSeconds }}
  timeoutSeconds: {{ $p.timeoutSeconds }}
  failureThreshold: {{ $p.startupFailureThreshold }}
readinessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: {{ $p.periodSeconds }}
  timeoutSeconds: {{ $p.timeoutSeconds }}
  failureThreshold: 3
livenessProbe:
  httpGet: {path: /healthz, port: http}
  initialDelaySeconds: {{ $p.initialDelaySeconds }}
  periodSeconds: {{ $p.periodSeconds }}
  timeoutSeconds: {{ $p.timeoutSeconds }}
  failureThreshold: {{ $p.failureThreshold }}
{{- end -}}

{{- define "refind.metricsAnnotations" -}}
{{- $root := index . 0 -}}
{{- if $root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/path: /metrics
prometheus.io/port: {{ index . 1 | quote }}
{{- end }}
{{- end -}}

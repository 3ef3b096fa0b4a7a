{{/* Common labels. */}}
{{- define "loganalyzer.labels" -}}
app.kubernetes.io/name: loganalyzer
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: loganalyzer
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* image: (list . "jobs"|"train") -> registry/repository:tag */}}
{{- define "loganalyzer.image" -}}
{{- $root := index . 0 -}}
{{- $img := index $root.Values.images (index . 1) -}}
{{- $reg := $root.Values.images.registry -}}
{{- if $reg }}{{ printf "%s/%s:%s" (trimSuffix "/" $reg) $img.repository $img.tag }}{{ else }}{{ printf "%s:%s" $img.repository $img.tag }}{{ end -}}
{{- end }}

{{- define "loganalyzer.trackingUri" -}}
{{- .Values.tracking.uri | default (printf "http://%s-mlflow:5000" .Release.Name) -}}
{{- end }}

{{/* The hardened pod security context every pod gets (Pod Security "restricted"). */}}
{{- define "loganalyzer.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
fsGroup: 1000
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "loganalyzer.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{- define "loganalyzer.claim" -}}
{{- $root := index . 0 -}}{{- $which := index . 1 -}}
{{- (index $root.Values.storage $which).existingClaim | default (printf "%s-%s" $root.Release.Name $which) -}}
{{- end }}

{{/* Environment shared by stage Jobs and trainer pods. */}}
{{- define "loganalyzer.env" -}}
- name: RUN_ID
  value: {{ .Values.run.id | quote }}
- name: RUN_DIR
  value: /data/runs/$(RUN_ID)
- name: BASE_MODEL
  value: {{ .Values.run.baseModel | quote }}
- name: HOME
  value: /tmp
- name: HF_HOME
  value: /data/hf-cache
- name: LOGANALYZER_CONFIGS_DIR  # the ConfigMaps first, then the image's copy
  value: /etc/loganalyzer/configs:/opt/loganalyzer/configs
{{- end }}

{{- define "loganalyzer.envFrom" -}}
- configMapRef:
    name: {{ .Release.Name }}-tracking
    optional: true
- secretRef:
    name: {{ .Values.secrets.mlflow }}
    optional: true
- secretRef:
    name: {{ .Values.secrets.hf }}
    optional: true
{{- end }}

{{- define "loganalyzer.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: /data
- name: models
  mountPath: /models
- name: configs
  mountPath: /etc/loganalyzer/configs
  readOnly: true
{{- end }}

{{- define "loganalyzer.volumes" -}}
- name: tmp
  emptyDir: {}
- name: data
  persistentVolumeClaim:
    claimName: {{ include "loganalyzer.claim" (list . "data") }}
- name: models
  persistentVolumeClaim:
    claimName: {{ include "loganalyzer.claim" (list . "models") }}
- name: configs
  projected:
    sources:
      - configMap:
          name: {{ .Release.Name }}-recipes
          optional: true
      - configMap:
          name: {{ .Release.Name }}-deepspeed
          optional: true
          items:
          {{- range $path, $_ := .Files.Glob "files/configs/deepspeed/*.json" }}
            - key: {{ base $path }}
              path: deepspeed/{{ base $path }}
          {{- end }}
{{- end }}

{{/* gpu resources: (list $resources $gpus) -> merged requests/limits */}}
{{- define "loganalyzer.resources" -}}
{{- $res := deepCopy (index . 0) -}}
{{- $gpus := int (index . 1) -}}
{{- if gt $gpus 0 -}}
{{- $_ := set $res "requests" (merge (dict "nvidia.com/gpu" (toString $gpus)) ($res.requests | default dict)) -}}
{{- $_ := set $res "limits" (merge (dict "nvidia.com/gpu" (toString $gpus)) ($res.limits | default dict)) -}}
{{- end -}}
{{- toYaml $res -}}
{{- end }}

{{/* A Ray head or worker pod spec: (list . containerName gpus) */}}
{{- define "loganalyzer.rayPod" -}}
{{- $root := index . 0 -}}
serviceAccountName: {{ $root.Values.serviceAccounts.train }}
automountServiceAccountToken: false
securityContext: {{- include "loganalyzer.podSecurityContext" $root | nindent 2 }}
{{- with $root.Values.images.pullSecrets }}
imagePullSecrets: {{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- with $root.Values.placement.gpu.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.placement.gpu.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  - name: {{ index . 1 }}
    image: {{ include "loganalyzer.image" (list $root "train") }}
    imagePullPolicy: {{ $root.Values.images.pullPolicy }}
    {{- if eq (index . 1) "ray-head" }}
    ports:
      - name: gcs
        containerPort: 6379
        protocol: TCP
      - name: dashboard
        containerPort: 8265
        protocol: TCP
      - name: client
        containerPort: 10001
        protocol: TCP
    {{- end }}
    env: {{- include "loganalyzer.env" $root | nindent 6 }}
      - name: TRITON_CACHE_DIR
        value: /tmp/triton
      - name: NCCL_DEBUG
        value: WARN
      - name: TORCH_NCCL_ASYNC_ERROR_HANDLING
        value: "1"
      - name: PYTHONUNBUFFERED
        value: "1"
      - name: PYTORCH_CUDA_ALLOC_CONF
        value: expandable_segments:True
    envFrom: {{- include "loganalyzer.envFrom" $root | nindent 6 }}
    {{- $res := include "loganalyzer.resources" (list dict (index . 2)) }}
    {{- if ne $res "{}" }}
    resources: {{- $res | nindent 6 }}
    {{- end }}
    securityContext: {{- include "loganalyzer.containerSecurityContext" $root | nindent 6 }}
    volumeMounts: {{- include "loganalyzer.volumeMounts" $root | nindent 6 }}
      - name: dshm
        mountPath: /dev/shm
volumes: {{- include "loganalyzer.volumes" $root | nindent 2 }}
  - name: dshm
    emptyDir:
      medium: Memory
      sizeLimit: {{ $root.Values.raySft.shmSize }}
{{- end }}

{{/* Pods that run to completion stay out of an Istio mesh: a sidecar outlives the main container, so the pod never
completes. */}}
{{- define "loganalyzer.batchPodAnnotations" -}}
sidecar.istio.io/inject: "false"
{{- end }}

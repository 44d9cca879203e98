{{- define "kizuna.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: never the chart version, so upgrades keep matching their pods. */}}
{{- define "kizuna.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kizuna.labels" -}}
{{ include "kizuna.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "operator"). */}}
{{- define "kizuna.componentSelector" -}}
{{ include "kizuna.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "kizuna.componentLabels" -}}
{{ include "kizuna.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "kizuna.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "kizuna.databaseSecret" -}}
{{- if .Values.postgresql.enabled -}}
{{ include "kizuna.fullname" . }}-database
{{- else -}}
{{ .Values.database.existingSecret }}
{{- end -}}
{{- end -}}

{{- define "kizuna.postgresqlSecret" -}}
{{ .Values.postgresql.existingSecret | default (printf "%s-postgresql" (include "kizuna.fullname" .)) }}
{{- end -}}

{{/* The store URL's Secret and key, for processes that need nothing else (hooks). */}}
{{- define "kizuna.databaseEnv" -}}
- name: KIZUNA_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "kizuna.databaseSecret" . }}
      key: {{ if .Values.postgresql.enabled }}url{{ else }}{{ .Values.database.urlKey }}{{ end }}
{{- if .Values.postgresql.enabled }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "kizuna.postgresqlSecret" . }}
      key: password
{{- end }}
{{- end -}}

{{- define "kizuna.authSecret" -}}
{{ .Values.auth.existingSecret | default (printf "%s-auth" (include "kizuna.fullname" .)) }}
{{- end -}}

{{/* Environment every Kizuna process gets: settings file, store URL, artifact access. */}}
{{- define "kizuna.env" -}}
- name: KIZUNA_CONFIG
  value: /etc/kizuna/kizuna.yaml
{{ include "kizuna.databaseEnv" . }}
{{- with .Values.artifacts.s3.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: AWS_ACCESS_KEY_ID}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: AWS_SECRET_ACCESS_KEY}
{{- end }}
{{- with .Values.artifacts.s3.endpointUrl }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* /data holds artifacts (the shared PVC) and caches; /tmp is the only other writable path. */}}
{{- define "kizuna.volumeMounts" -}}
- {name: settings, mountPath: /etc/kizuna, readOnly: true}
- {name: data, mountPath: /data}
- {name: tmp, mountPath: /tmp}
{{- end -}}

{{- define "kizuna.volumes" -}}
- name: settings
  configMap:
    name: {{ include "kizuna.fullname" . }}-settings
- name: data
{{- if .Values.artifacts.pvc.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "kizuna.fullname" . }}-artifacts
{{- else }}
  emptyDir: {}
{{- end }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{/* Pod and container hardening shared by every Kizuna pod. */}}
{{- define "kizuna.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
fsGroup: 10001
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "kizuna.containerSecurity" -}}
allowPrivilegeEscalation: false
capabilities: {drop: ["ALL"]}
{{- end -}}

{{/* A Ray pod of the RayService: (dict "root" $ "role" "ray-head" "resources" {...}). */}}
{{- define "kizuna.rayPod" -}}
{{- $root := .root -}}
metadata:
  labels:
    {{- include "kizuna.componentSelector" (dict "root" $root "component" "serve") | nindent 4 }}
spec:
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- include "kizuna.podSecurity" $root | nindent 4 }}
  {{- with $root.Values.serve.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.serve.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ .role }}
      image: {{ include "kizuna.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      env:
        {{- include "kizuna.env" $root | nindent 8 }}
        - name: KIZUNA_API_TOKENS
          valueFrom:
            secretKeyRef: {name: {{ include "kizuna.authSecret" $root }}, key: api-tokens}
      ports:
        {{- if eq .role "ray-head" }}
        - {name: gcs, containerPort: 6379, protocol: TCP}
        - {name: dashboard, containerPort: 8265, protocol: TCP}
        - {name: client, containerPort: 10001, protocol: TCP}
        {{- end }}
        - {name: serve, containerPort: 8000, protocol: TCP}
      securityContext:
        {{- include "kizuna.containerSecurity" $root | nindent 8 }}
      resources:
        {{- toYaml .resources | nindent 8 }}
      volumeMounts:
        {{- include "kizuna.volumeMounts" $root | nindent 8 }}
  volumes:
    {{- include "kizuna.volumes" $root | nindent 4 }}
{{- end -}}

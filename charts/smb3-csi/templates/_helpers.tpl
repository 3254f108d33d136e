{{/* Labels on every object. */}}
{{- define "smb3-csi.labels" -}}
app.kubernetes.io/name: smb3-csi
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.customLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The driver image, tag defaulting to the appVersion. */}}
{{- define "smb3-csi.image" -}}
{{- printf "%s:%s" .Values.image.smb.repository (default .Chart.AppVersion .Values.image.smb.tag) -}}
{{- end -}}

{{/* A sidecar image from its values block. */}}
{{- define "smb3-csi.sidecarImage" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/* The kubelet root directory, without a trailing slash. */}}
{{- define "smb3-csi.kubeletDir" -}}
{{- .Values.linux.kubelet | trimSuffix "/" -}}
{{- end -}}

{{/* Host directory of the node plugin socket: <kubelet>/plugins/<driver-name>. */}}
{{- define "smb3-csi.pluginDir" -}}
{{- printf "%s/plugins/%s" (include "smb3-csi.kubeletDir" .) .Values.driver.name -}}
{{- end -}}

{{/* Namespace of the StorageClass Secret. */}}
{{- define "smb3-csi.secretNamespace" -}}
{{- default .Release.Namespace .Values.storageClass.secretNamespace -}}
{{- end -}}

{{/* Arguments the driver takes in both roles. */}}
{{- define "smb3-csi.commonArgs" -}}
- --endpoint=unix:///csi/csi.sock
- --driver-name={{ .root.Values.driver.name }}
- --log-level={{ .logLevel }}
- --log-format={{ .root.Values.logFormat }}
{{- if gt (int .metricsPort) 0 }}
- --metrics-address=:{{ .metricsPort }}
{{- end }}
{{- end -}}

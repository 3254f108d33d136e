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
- --log-level={{ include "smb3-csi.logLevel" .logLevel }}
- --log-format={{ .root.Values.logFormat }}
- --smb-encryption={{ .root.Values.smbEncryption }}
{{- if gt (int .metricsPort) 0 }}
- --metrics-address=:{{ .metricsPort }}
{{- end }}
{{- end -}}

{{/* Kubernetes 1.34 or newer: the storage.k8s.io/v1 VolumeAttributesClass API is served. */}}
{{- define "smb3-csi.vacV1" -}}
{{- if semverCompare ">=1.34.0-0" .Capabilities.KubeVersion.Version }}true{{ end -}}
{{- end -}}

{{/*
A repository with image.baseRepo in front when it starts with "/" (csi-driver-smb's
convention for mirrors). Takes (dict "root" $ "repo" REPOSITORY "key" VALUE-PATH).
*/}}
{{- define "smb3-csi.repository" -}}
{{- $base := .root.Values.image.baseRepo | default "" | trimSuffix "/" -}}
{{- if hasPrefix "/" .repo -}}
{{- if not $base -}}
{{- fail (printf "%s.repository %q starts with \"/\", which means \"under image.baseRepo\", but image.baseRepo is empty" .key .repo) -}}
{{- end -}}
{{- printf "%s%s" $base .repo -}}
{{- else -}}
{{- .repo -}}
{{- end -}}
{{- end -}}

{{/* image.smb names csi-driver-smb's own plugin image (a values file carried over). */}}
{{- define "smb3-csi.smbpluginImage" -}}
{{- if eq (.Values.image.smb.repository | trimSuffix "/" | splitList "/" | last) "smbplugin" }}true{{ end -}}
{{- end -}}

{{/* The driver image: image.smb, tag defaulting to the appVersion; csi-driver-smb's smbplugin is replaced by ours. */}}
{{- define "smb3-csi.driverImage" -}}
{{- if include "smb3-csi.smbpluginImage" . -}}
{{- printf "ghcr.io/smb3-csi/smb3-csi:%s" .Chart.AppVersion -}}
{{- else -}}
{{- $repo := include "smb3-csi.repository" (dict "root" . "repo" .Values.image.smb.repository "key" "image.smb") -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.smb.tag) -}}
{{- end -}}
{{- end -}}

{{/*
A sidecar image: (dict "root" $ "key" "csiProvisioner"). csi-provisioner and csi-resizer
without a tag get the newest release the cluster version can run.
*/}}
{{- define "smb3-csi.sidecar" -}}
{{- $img := index .root.Values.image .key -}}
{{- $v1 := include "smb3-csi.vacV1" .root -}}
{{- $auto := dict "csiProvisioner" (ternary "v6.3.0" "v5.3.0" (eq $v1 "true")) "csiResizer" (ternary "v2.2.0" "v1.14.0" (eq $v1 "true")) -}}
{{- $tag := $img.tag | default (get $auto .key) -}}
{{- if not $tag -}}
{{- fail (printf "image.%s.tag is empty" .key) -}}
{{- end -}}
{{- $repo := include "smb3-csi.repository" (dict "root" .root "repo" $img.repository "key" (printf "image.%s" .key)) -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{/* imagePullSecrets entries from names or {name: ...} objects. */}}
{{- define "smb3-csi.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets -}}
imagePullSecrets:
{{- range . }}
  - name: {{ if kindIs "map" . }}{{ get . "name" }}{{ else }}{{ . }}{{ end }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* The driver's --log-level from a tracing filter or a klog verbosity (csi-driver-smb's integer). */}}
{{- define "smb3-csi.logLevel" -}}
{{- if kindIs "string" . -}}
{{- . -}}
{{- else -}}
{{- $v := int . -}}
{{- if le $v 2 }}info{{ else if le $v 5 }}debug{{ else }}debug,smb3_csi=trace,smb3=trace{{ end -}}
{{- end -}}
{{- end -}}

{{/* Controller affinity: controller.affinity, plus the control-plane requirement (ANDed into every term). */}}
{{- define "smb3-csi.controllerAffinity" -}}
{{- $c := .Values.controller -}}
{{- $aff := deepCopy ($c.affinity | default dict) -}}
{{- if or $c.runOnControlPlane $c.runOnMaster -}}
{{- $expr := dict "key" "node-role.kubernetes.io/control-plane" "operator" "Exists" -}}
{{- $na := get $aff "nodeAffinity" | default dict -}}
{{- $req := get $na "requiredDuringSchedulingIgnoredDuringExecution" | default dict -}}
{{- $terms := get $req "nodeSelectorTerms" | default (list dict) -}}
{{- $merged := list -}}
{{- range $terms -}}
{{- $t := deepCopy . -}}
{{- $_ := set $t "matchExpressions" (append (get $t "matchExpressions" | default list) $expr) -}}
{{- $merged = append $merged $t -}}
{{- end -}}
{{- $_ := set $req "nodeSelectorTerms" $merged -}}
{{- $_ := set $na "requiredDuringSchedulingIgnoredDuringExecution" $req -}}
{{- $_ := set $aff "nodeAffinity" $na -}}
{{- end -}}
{{- if $aff }}{{ toYaml $aff }}{{ end -}}
{{- end -}}

{{/* Controller tolerations: controller.tolerations, plus the control-plane taint's when it must run there. */}}
{{- define "smb3-csi.controllerTolerations" -}}
{{- $c := .Values.controller -}}
{{- $tol := $c.tolerations | default list -}}
{{- if or $c.runOnControlPlane $c.runOnMaster -}}
{{- $covered := false -}}
{{- range $tol -}}
{{- $key := get . "key" | default "" -}}
{{- $effect := get . "effect" | default "" -}}
{{- if and (eq (get . "operator" | default "Equal") "Exists") (has $key (list "" "node-role.kubernetes.io/control-plane")) (has $effect (list "" "NoSchedule")) -}}
{{- $covered = true -}}
{{- end -}}
{{- end -}}
{{- if not $covered -}}
{{- $tol = append $tol (dict "key" "node-role.kubernetes.io/control-plane" "operator" "Exists" "effect" "NoSchedule") -}}
{{- end -}}
{{- end -}}
{{- if $tol }}{{ toYaml $tol }}{{ end -}}
{{- end -}}

{{/* The value at a dotted path is set (present in the merged values). */}}
{{- define "smb3-csi.has" -}}
{{- $cur := .root.Values -}}
{{- $found := true -}}
{{- range splitList "." .path -}}
{{- if and $found (kindIs "map" $cur) (hasKey $cur .) -}}
{{- $cur = index $cur . -}}
{{- else -}}
{{- $found = false -}}
{{- end -}}
{{- end -}}
{{- if $found }}true{{ end -}}
{{- end -}}

{{/*
csi-driver-smb values that have no meaning here: accepted by the schema, ignored, and
named one per line in the install notes.
*/}}
{{- define "smb3-csi.ignoredKeys" -}}
{{- $root := . -}}
{{- range list "feature.enableGetVolumeStats" "controller.workingMountDir" "controller.extraArgs" "node.extraArgs" "node.nodeDriverRegistrar" }}
{{- if include "smb3-csi.has" (dict "root" $root "path" .) }}
{{ . }}
{{- end }}
{{- end }}
{{- if hasKey .Values "windows" }}
{{- $w := get .Values "windows" }}
{{- if and (kindIs "map" $w) $w }}
{{- range $k, $_ := $w }}
windows.{{ $k }}
{{- end }}
{{- else }}
windows
{{- end }}
{{- end }}
{{- end -}}

{{/* StorageClass parameter keys the driver takes (lower case; it matches keys case-insensitively). */}}
{{- define "smb3-csi.isDriverParam" -}}
{{- $k := lower . -}}
{{- if or (has $k (list "source" "subdir" "ondelete" "encryption")) (hasPrefix "csi.storage.k8s.io/" $k) }}true{{ end -}}
{{- end -}}

{{/* The krb5.conf ConfigMap the plugins mount: the one made of kerberos.krb5Conf, else kerberos.krb5ConfigMap; empty: none. */}}
{{- define "smb3-csi.krb5ConfigMap" -}}
{{- $k := .Values.kerberos | default dict -}}
{{- if $k.krb5Conf -}}{{ .Values.rbac.name }}-krb5-conf{{- else if $k.krb5ConfigMap -}}{{ $k.krb5ConfigMap }}{{- end -}}
{{- end -}}

{{/* KRB5_CONFIG for a plugin container, when a krb5.conf is mounted. */}}
{{- define "smb3-csi.krb5Env" -}}
{{- if include "smb3-csi.krb5ConfigMap" . }}
- name: KRB5_CONFIG
  value: /etc/smb3-csi/krb5/krb5.conf
{{- end }}
{{- end -}}

{{- define "smb3-csi.krb5Mount" -}}
{{- if include "smb3-csi.krb5ConfigMap" . }}
- name: krb5-conf
  mountPath: /etc/smb3-csi/krb5
  readOnly: true
{{- end }}
{{- end -}}

{{- define "smb3-csi.krb5Volume" -}}
{{- with include "smb3-csi.krb5ConfigMap" . }}
- name: krb5-conf
  configMap:
    name: {{ . }}
    items:
      - key: krb5.conf
        path: krb5.conf
{{- end }}
{{- end -}}

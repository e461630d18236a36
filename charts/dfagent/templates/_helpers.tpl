{{- define "dfagent.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dfagent.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dfagent.labels" -}}
{{ include "dfagent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "dfagent.tokenSecret" -}}
{{- default (printf "%s-token" (include "dfagent.fullname" .)) .Values.token.existingSecret -}}
{{- end -}}

{{- /* The agent's user and group (the image's USER). */ -}}
{{- define "dfagent.uid" -}}65532{{- end -}}

{{- /*
Where the cache volume is mounted, and storage.dir: a directory inside it that the agent owns
and keeps owner-only. The volume's own top is kubelet's (an emptyDir is root's, mode 2777 with
fsGroup; a hostPath DirectoryOrCreate root's, 0755), which the agent may not chmod.
*/ -}}
{{- define "dfagent.cacheMount" -}}/var/cache/dfagent{{- end -}}
{{- define "dfagent.cacheDir" -}}{{ include "dfagent.cacheMount" . }}/cache{{- end -}}

{{- define "dfagent.tlsSecret" -}}
{{- if .Values.tls.existingSecret -}}
{{- .Values.tls.existingSecret -}}
{{- else if .Values.tls.certManager.enabled -}}
{{- printf "%s-tls" (include "dfagent.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- /* The agent's config: the user's keys, plus what this deployment decides. */ -}}
{{- define "dfagent.config" -}}
{{- $peer := dict "token_file" "/etc/dfagent/token/token" -}}
{{- if include "dfagent.tlsSecret" . -}}
{{- $_ := set $peer "tls" (dict "cert" "/etc/dfagent/tls/tls.crt" "key" "/etc/dfagent/tls/tls.key" "ca" "/etc/dfagent/tls/ca.crt") -}}
{{- end -}}
{{- $fixed := dict
  "storage" (dict "dir" (include "dfagent.cacheDir" .))
  "peer" $peer
-}}
{{- if ne (include "dfagent.swarmMode" .) "dragonfly" -}}
{{- $_ := set $fixed "swarm" (dict "dns" (printf "%s-peers.%s.svc.%s" (include "dfagent.fullname" .) .Release.Namespace .Values.clusterDomain)) -}}
{{- end -}}
{{- toYaml (mustMergeOverwrite (deepCopy .Values.config) $fixed) -}}
{{- end -}}

{{- define "dfagent.port" -}}
{{- regexFind "[0-9]+$" . -}}
{{- end -}}

{{- /* builtin (the agents find each other through the peers Service) or dragonfly. */ -}}
{{- define "dfagent.swarmMode" -}}
{{- default "builtin" (dig "swarm" "mode" "builtin" .Values.config) -}}
{{- end -}}

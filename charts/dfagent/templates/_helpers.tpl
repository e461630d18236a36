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

{{- define "dfagent.cachePath" -}}/var/cache/dfagent{{- end -}}

{{- /* The agent's config: the user's keys, plus what this deployment decides. */ -}}
{{- define "dfagent.config" -}}
{{- $fixed := dict
  "storage" (dict "dir" (include "dfagent.cachePath" .))
  "peer" (dict "token_file" "/etc/dfagent/token/token")
  "swarm" (dict "dns" (printf "%s-peers.%s.svc.%s" (include "dfagent.fullname" .) .Release.Namespace .Values.clusterDomain))
-}}
{{- toYaml (mustMergeOverwrite (deepCopy .Values.config) $fixed) -}}
{{- end -}}

{{- define "dfagent.port" -}}
{{- regexFind "[0-9]+$" . -}}
{{- end -}}

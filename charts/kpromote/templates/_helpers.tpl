{{/* The name of the controller's objects and its Lease: <release>-controller. */}}
{{- define "kpromote.fullname" -}}
{{- default (printf "%s-controller" .Release.Name) .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kpromote.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kpromote.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kpromote.claimName" -}}
{{- default (printf "%s-backup" .Release.Name) .Values.backup.existingClaim -}}
{{- end -}}

{{- define "kpromote.selectorLabels" -}}
app.kubernetes.io/name: kpromote-controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kpromote.labels" -}}
{{ include "kpromote.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kosmos
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

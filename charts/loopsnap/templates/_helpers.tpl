{{/*
SPDX-License-Identifier: Apache-2.0
Names, labels and small building blocks shared by the templates.
*/}}

{{- define "loopsnap.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped base name; every object name derives from it (max 63 chars, suffixes included). */}}
{{- define "loopsnap.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "loopsnap.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "loopsnap.labels" -}}
helm.sh/chart: {{ include "loopsnap.chart" . }}
app.kubernetes.io/name: {{ include "loopsnap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: loopsnap
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: pass (dict "ctx" $ "component" "controller"). */}}
{{- define "loopsnap.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loopsnap.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "loopsnap.componentLabels" -}}
{{ include "loopsnap.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "loopsnap.controller.fullname" -}}
{{- printf "%s-controller" (include "loopsnap.fullname" .) }}
{{- end }}

{{- define "loopsnap.node.fullname" -}}
{{- printf "%s-node" (include "loopsnap.fullname" .) }}
{{- end }}

{{- define "loopsnap.controller.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- default (include "loopsnap.controller.fullname" .) .Values.controller.serviceAccount.name }}
{{- else }}
{{- required "controller.serviceAccount.name is required when controller.serviceAccount.create is false" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "loopsnap.node.serviceAccountName" -}}
{{- if .Values.node.serviceAccount.create }}
{{- default (include "loopsnap.node.fullname" .) .Values.node.serviceAccount.name }}
{{- else }}
{{- required "node.serviceAccount.name is required when node.serviceAccount.create is false" .Values.node.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest; pass (dict "image" .Values.image "ctx" $). */}}
{{- define "loopsnap.image" -}}
{{- $tag := default .ctx.Chart.AppVersion .image.tag }}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{/* Lease holding the leader; the controller's --leader-election-id and the RBAC resourceNames use it. */}}
{{- define "loopsnap.leaderLeaseName" -}}
{{- printf "%s-leader" (include "loopsnap.controller.fullname" .) }}
{{- end }}

{{/* The kubelet's plugin directory of this driver: socket and registration path. */}}
{{- define "loopsnap.pluginDir" -}}
{{- printf "%s/plugins/%s" (trimSuffix "/" .Values.node.kubeletDir) .Values.driverName }}
{{- end }}

{{/* The registration socket the kubelet's plugin watcher finds in <kubeletDir>/plugins_registry/. */}}
{{- define "loopsnap.registrationSocket" -}}
{{- printf "%s/plugins_registry/%s-reg.sock" (trimSuffix "/" .Values.node.kubeletDir) .Values.driverName }}
{{- end }}

{{/*
Env of both components for apiServer.host/port: in-cluster config reads KUBERNETES_SERVICE_HOST/PORT, and an
explicit env entry wins over the ones the kubelet injects for the kubernetes Service. Renders nothing when
unset; one without the other is refused.
*/}}
{{- define "loopsnap.apiServerEnv" -}}
{{- $a := .Values.apiServer }}
{{- if and $a.host (not $a.port) }}
{{- fail "apiServer.host needs apiServer.port" }}
{{- end }}
{{- if and $a.port (not $a.host) }}
{{- fail "apiServer.port needs apiServer.host" }}
{{- end }}
{{- if $a.host -}}
- name: KUBERNETES_SERVICE_HOST
  value: {{ $a.host | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ $a.port | toString | quote }}
{{- end }}
{{- end }}

{{/* Secrets with tls.crt, tls.key and ca.crt: the node plugin's server certificate and the controller's client certificate. */}}
{{- define "loopsnap.tls.nodeSecretName" -}}
{{- if eq .Values.tls.source "secret" }}
{{- required "tls.secret.nodeSecretName is required when tls.source is secret" .Values.tls.secret.nodeSecretName }}
{{- else }}
{{- printf "%s-node-tls" (include "loopsnap.fullname" .) }}
{{- end }}
{{- end }}

{{- define "loopsnap.tls.controllerSecretName" -}}
{{- if eq .Values.tls.source "secret" }}
{{- required "tls.secret.controllerSecretName is required when tls.source is secret" .Values.tls.secret.controllerSecretName }}
{{- else }}
{{- printf "%s-controller-tls" (include "loopsnap.fullname" .) }}
{{- end }}
{{- end }}

{{/* DNS name in the node plugins' server certificate; the controller verifies it (--tls-server-name). */}}
{{- define "loopsnap.tls.serverName" -}}
{{- default (printf "%s.%s.svc" (include "loopsnap.node.fullname" .) .Release.Namespace) .Values.tls.serverName }}
{{- end }}

{{/*
Renders every CRD file under files/crds/<group>/ (a symlink to the repository's crds/ directory), adding the
chart's labels and, with crds.keep, helm.sh/resource-policy: keep. Pass (dict "ctx" $ "group" "loopsnap.dev").
*/}}
{{- define "loopsnap.renderCrds" -}}
{{- $ctx := .ctx }}
{{- range $path, $_ := $ctx.Files.Glob (printf "files/crds/%s/*.yaml" .group) }}
{{- range $doc := regexSplit "(?m)^---\\s*$" ($ctx.Files.Get $path) -1 }}
{{- $crd := fromYaml $doc }}
{{- if $crd }}
{{- if hasKey $crd "Error" }}
{{- fail (printf "%s: %s" $path (get $crd "Error")) }}
{{- end }}
{{- $meta := $crd.metadata }}
{{- $_ := set $meta "labels" (merge (dict) ($meta.labels | default dict) (include "loopsnap.labels" $ctx | fromYaml)) }}
{{- if $ctx.Values.crds.keep }}
{{- $_ := set $meta "annotations" (merge (dict) ($meta.annotations | default dict) (dict "helm.sh/resource-policy" "keep")) }}
{{- end }}
---
# Source: {{ $path }}
{{ toYaml $crd }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "loopsnap.tolerations" -}}
{{- with . }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
TLS material of tls.source=helm, as JSON {ca, nodeCrt, nodeKey, controllerCrt, controllerKey} (PEM). Kept from
the existing Secrets when both exist (upgrades keep the certificates); otherwise a new CA signs a server
certificate for the node plugins and a client certificate for the controller. Computed once per render and
memoized, so that the Secrets and the pods' checksum annotations agree.
*/}}
{{- define "loopsnap.tls.material" -}}
{{- if not (hasKey .Values "__loopsnapTls") }}
{{- $ns := .Release.Namespace }}
{{- $node := lookup "v1" "Secret" $ns (printf "%s-node-tls" (include "loopsnap.fullname" .)) }}
{{- $ctl := lookup "v1" "Secret" $ns (printf "%s-controller-tls" (include "loopsnap.fullname" .)) }}
{{- $m := dict }}
{{- if and $node $ctl $node.data $ctl.data (hasKey $node.data "tls.crt") (hasKey $ctl.data "tls.crt") }}
{{- $m = dict "ca" (b64dec (get $node.data "ca.crt")) "nodeCrt" (b64dec (get $node.data "tls.crt")) "nodeKey" (b64dec (get $node.data "tls.key")) "controllerCrt" (b64dec (get $ctl.data "tls.crt")) "controllerKey" (b64dec (get $ctl.data "tls.key")) }}
{{- else }}
{{- $days := int .Values.tls.helm.validityDays }}
{{- $ca := genCA (printf "%s-ca" (include "loopsnap.fullname" .)) $days }}
{{- $server := genSignedCert (include "loopsnap.tls.serverName" .) nil (list (include "loopsnap.tls.serverName" .)) $days $ca }}
{{- $client := genSignedCert (printf "%s-controller" (include "loopsnap.fullname" .)) nil nil $days $ca }}
{{- $m = dict "ca" $ca.Cert "nodeCrt" $server.Cert "nodeKey" $server.Key "controllerCrt" $client.Cert "controllerKey" $client.Key }}
{{- end }}
{{- $_ := set .Values "__loopsnapTls" $m }}
{{- end }}
{{- toJson (get .Values "__loopsnapTls") }}
{{- end }}

{{/* A checksum that changes when the TLS material changes (pods read it at start). */}}
{{- define "loopsnap.tls.checksum" -}}
{{- if eq .Values.tls.source "helm" }}
{{- include "loopsnap.tls.material" . | sha256sum }}
{{- else if eq .Values.tls.source "secret" }}
{{- printf "%s/%s" (include "loopsnap.tls.nodeSecretName" .) (include "loopsnap.tls.controllerSecretName" .) | sha256sum }}
{{- else }}
{{- "cert-manager" | sha256sum }}
{{- end }}
{{- end }}

{{- define "loopsnap.controller.metricsServiceName" -}}
{{- printf "%s-metrics" (include "loopsnap.controller.fullname" .) }}
{{- end }}

{{- define "loopsnap.node.metricsServiceName" -}}
{{- printf "%s-metrics" (include "loopsnap.node.fullname" .) }}
{{- end }}

{{/* Names and labels. */}}
{{- define "fleetwatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fleetwatch.fullname" -}}
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

{{- define "fleetwatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fleetwatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fleetwatch.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "fleetwatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fleetwatch
{{- end -}}

{{- define "fleetwatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "fleetwatch.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "fleetwatch.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The service's roles, in the order of `fleetwatch roles`. */}}
{{- define "fleetwatch.roleNames" -}}
ingest devices trainer scorer alerts storage archive webhooks jobs schedules rules
{{- end -}}

{{/*
The workloads as JSON: [{name, component, roles, kind, spec}]; one per enabled role, or
the one all-in-one workload. Workloads that run ingest are StatefulSets: the pod name is
the MQTT instance id, so a restarted pod resumes its persistent session.
*/}}
{{- define "fleetwatch.workloads" -}}
{{- $root := . -}}
{{- $out := list -}}
{{- if .Values.roles.split -}}
{{- range $role := splitList " " (include "fleetwatch.roleNames" .) -}}
{{- $spec := get $root.Values.roles $role -}}
{{- if $spec.enabled -}}
{{- $kind := ternary "StatefulSet" "Deployment" (eq $role "ingest") -}}
{{- $out = append $out (dict "name" (printf "%s-%s" (include "fleetwatch.fullname" $root) $role) "component" $role "roles" $role "kind" $kind "spec" $spec "autoscaling" $spec.autoscaling) -}}
{{- end -}}
{{- end -}}
{{- else -}}
{{- $out = append $out (dict "name" (printf "%s-all" (include "fleetwatch.fullname" .)) "component" "all" "roles" "all" "kind" "StatefulSet" "spec" .Values.allInOne "autoscaling" (dict "enabled" false)) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* Whether a component (a role name or "all") serves the given role. */}}
{{- define "fleetwatch.runs" -}}
{{- if or (eq .component "all") (eq .component .role) -}}true{{- end -}}
{{- end -}}

{{- define "fleetwatch.secretsDir" -}}/etc/fleetwatch/secrets{{- end -}}

{{/*
Every Secret the configuration reads, as JSON: [{volume, secret, items: [{key, path}]}],
mounted at /etc/fleetwatch/secrets/<volume>/<path>. Every pod mounts all of them: every
process loads the whole configuration, which reads its *_file secrets at start.
*/}}
{{- define "fleetwatch.secretMounts" -}}
{{- $v := .Values -}}
{{- $m := list -}}
{{- if and $v.kafka.tls.enabled $v.kafka.tls.caSecret.name -}}
{{- $m = append $m (dict "volume" "kafka-ca" "secret" $v.kafka.tls.caSecret.name "items" (list (dict "key" $v.kafka.tls.caSecret.key "path" "ca.crt"))) -}}
{{- end -}}
{{- if and $v.kafka.tls.enabled $v.kafka.tls.clientCertSecret.name -}}
{{- $c := $v.kafka.tls.clientCertSecret -}}
{{- $m = append $m (dict "volume" "kafka-client" "secret" $c.name "items" (list (dict "key" $c.certKey "path" "tls.crt") (dict "key" $c.keyKey "path" "tls.key"))) -}}
{{- end -}}
{{- if $v.kafka.sasl.enabled -}}
{{- $m = append $m (dict "volume" "kafka-sasl" "secret" $v.kafka.sasl.passwordSecret.name "items" (list (dict "key" $v.kafka.sasl.passwordSecret.key "path" "password"))) -}}
{{- end -}}
{{- if $v.mqtt.passwordSecret.name -}}
{{- $m = append $m (dict "volume" "mqtt-password" "secret" $v.mqtt.passwordSecret.name "items" (list (dict "key" $v.mqtt.passwordSecret.key "path" "password"))) -}}
{{- end -}}
{{- if and $v.mqtt.tls.enabled $v.mqtt.tls.caSecret.name -}}
{{- $m = append $m (dict "volume" "mqtt-ca" "secret" $v.mqtt.tls.caSecret.name "items" (list (dict "key" $v.mqtt.tls.caSecret.key "path" "ca.crt"))) -}}
{{- end -}}
{{- if and $v.mqtt.tls.enabled $v.mqtt.tls.clientCertSecret.name -}}
{{- $c := $v.mqtt.tls.clientCertSecret -}}
{{- $m = append $m (dict "volume" "mqtt-client" "secret" $c.name "items" (list (dict "key" $c.certKey "path" "tls.crt") (dict "key" $c.keyKey "path" "tls.key"))) -}}
{{- end -}}
{{- if $v.auth.hs256Secret.name -}}
{{- $m = append $m (dict "volume" "auth-hs256" "secret" $v.auth.hs256Secret.name "items" (list (dict "key" $v.auth.hs256Secret.key "path" "secret"))) -}}
{{- end -}}
{{- if $v.auth.jwksSecret.name -}}
{{- $m = append $m (dict "volume" "auth-jwks" "secret" $v.auth.jwksSecret.name "items" (list (dict "key" $v.auth.jwksSecret.key "path" "jwks.json"))) -}}
{{- end -}}
{{- if $v.httpTls.secretName -}}
{{- $m = append $m (dict "volume" "http-tls" "secret" $v.httpTls.secretName "items" (list (dict "key" "tls.crt" "path" "tls.crt") (dict "key" "tls.key" "path" "tls.key"))) -}}
{{- end -}}
{{- if $v.credentials.adminPasswordSecret.name -}}
{{- $m = append $m (dict "volume" "credentials-admin" "secret" $v.credentials.adminPasswordSecret.name "items" (list (dict "key" $v.credentials.adminPasswordSecret.key "path" "password"))) -}}
{{- end -}}
{{- if $v.archive.credentialsSecret.name -}}
{{- $c := $v.archive.credentialsSecret -}}
{{- $m = append $m (dict "volume" "archive-s3" "secret" $c.name "items" (list (dict "key" $c.accessKeyIdKey "path" "access-key-id") (dict "key" $c.secretAccessKeyKey "path" "secret-access-key"))) -}}
{{- end -}}
{{- range $e := $v.webhookEndpoints -}}
{{- $m = append $m (dict "volume" (printf "webhook-%s" $e.name) "secret" $e.secretRef.name "items" (list (dict "key" $e.secretRef.key "path" "secret"))) -}}
{{- end -}}
{{- toJson $m -}}
{{- end -}}

{{/* The settings the chart derives from its values, as JSON (merged over .Values.config). */}}
{{- define "fleetwatch.managedSettings" -}}
{{- $v := .Values -}}
{{- $dir := include "fleetwatch.secretsDir" . -}}
{{- $k := $v.kafka -}}
{{- $props := deepCopy $k.properties -}}
{{- $files := dict -}}
{{- if or $k.tls.enabled $k.sasl.enabled -}}
{{- $protocol := "ssl" -}}
{{- if and $k.tls.enabled $k.sasl.enabled -}}{{- $protocol = "sasl_ssl" -}}
{{- else if $k.sasl.enabled -}}{{- $protocol = "sasl_plaintext" -}}{{- end -}}
{{- $_ := set $props "security.protocol" $protocol -}}
{{- end -}}
{{- if and $k.tls.enabled $k.tls.caSecret.name -}}
{{- $_ := set $props "ssl.ca.location" (printf "%s/kafka-ca/ca.crt" $dir) -}}
{{- end -}}
{{- if and $k.tls.enabled $k.tls.clientCertSecret.name -}}
{{- $_ := set $props "ssl.certificate.location" (printf "%s/kafka-client/tls.crt" $dir) -}}
{{- $_ := set $props "ssl.key.location" (printf "%s/kafka-client/tls.key" $dir) -}}
{{- end -}}
{{- if $k.sasl.enabled -}}
{{- if not $k.sasl.passwordSecret.name -}}{{- fail "kafka.sasl.enabled needs kafka.sasl.passwordSecret.name (a Secret holding the SASL password)" -}}{{- end -}}
{{- $_ := set $props "sasl.mechanism" $k.sasl.mechanism -}}
{{- $_ := set $props "sasl.username" $k.sasl.username -}}
{{- $_ := set $files "sasl.password" (printf "%s/kafka-sasl/password" $dir) -}}
{{- end -}}
{{- $kafka := dict "brokers" $k.brokers "topic_prefix" $k.topicPrefix "partitions" $k.partitions "replication" $k.replication "properties" $props "property_files" $files -}}
{{- $m := $v.mqtt -}}
{{- $mqtt := dict "host" $m.host "port" $m.port "tls" $m.tls.enabled -}}
{{- if $m.username -}}{{- $_ := set $mqtt "username" $m.username -}}{{- end -}}
{{- if $m.passwordSecret.name -}}{{- $_ := set $mqtt "password_file" (printf "%s/mqtt-password/password" $dir) -}}{{- end -}}
{{- if and $m.tls.enabled $m.tls.caSecret.name -}}{{- $_ := set $mqtt "ca_file" (printf "%s/mqtt-ca/ca.crt" $dir) -}}{{- end -}}
{{- if and $m.tls.enabled $m.tls.clientCertSecret.name -}}
{{- $_ := set $mqtt "client_cert_file" (printf "%s/mqtt-client/tls.crt" $dir) -}}
{{- $_ := set $mqtt "client_key_file" (printf "%s/mqtt-client/tls.key" $dir) -}}
{{- end -}}
{{- $a := $v.auth -}}
{{- $auth := dict "mode" $a.mode "issuer" $a.issuer "audience" $a.audience -}}
{{- if and (eq $a.mode "jwt") (not $a.hs256Secret.name) (not $a.jwksSecret.name) -}}
{{- fail "auth.mode jwt needs auth.hs256Secret.name or auth.jwksSecret.name (a Secret with the HS256 secret or the identity provider's JWKS)" -}}
{{- end -}}
{{- if $a.hs256Secret.name -}}{{- $_ := set $auth "hs256_secret_file" (printf "%s/auth-hs256/secret" $dir) -}}{{- end -}}
{{- if $a.jwksSecret.name -}}{{- $_ := set $auth "jwks_file" (printf "%s/auth-jwks/jwks.json" $dir) -}}{{- end -}}
{{- $tls := dict -}}
{{- if $v.httpTls.secretName -}}
{{- $tls = dict "cert_file" (printf "%s/http-tls/tls.crt" $dir) "key_file" (printf "%s/http-tls/tls.key" $dir) -}}
{{- end -}}
{{- $credentials := dict -}}
{{- if $v.credentials.adminPasswordSecret.name -}}
{{- $_ := set $credentials "admin_password_file" (printf "%s/credentials-admin/password" $dir) -}}
{{- end -}}
{{- $archive := dict -}}
{{- if $v.archive.credentialsSecret.name -}}
{{- $archive = dict "s3" (dict "access_key_id_file" (printf "%s/archive-s3/access-key-id" $dir) "secret_access_key_file" (printf "%s/archive-s3/secret-access-key" $dir)) -}}
{{- end -}}
{{- $endpoints := list -}}
{{- range $e := $v.webhookEndpoints -}}
{{- $endpoints = append $endpoints (dict "name" $e.name "tenant" $e.tenant "url" $e.url "secret_file" (printf "%s/webhook-%s/secret" $dir $e.name)) -}}
{{- end -}}
{{- $settings := dict "kafka" $kafka "mqtt" $mqtt "auth" $auth "tls" $tls "credentials" $credentials "archive" $archive
  "storage" (dict "url" $v.storage.url)
  "webhooks" (dict "endpoints" $endpoints)
  "http" (dict "bind" (printf "0.0.0.0:%d" (int $v.ports.http)))
  "alerts" (dict "bind" (printf "0.0.0.0:%d" (int $v.ports.websocket))) -}}
{{- toJson $settings -}}
{{- end -}}

{{/* fleetwatch.toml: .Values.config with the chart's settings over it. */}}
{{- define "fleetwatch.toml" -}}
{{- $settings := mustMergeOverwrite (deepCopy .Values.config) (include "fleetwatch.managedSettings" . | fromJson) -}}
# fleetwatch.toml rendered by the fleetwatch chart; secrets are files under {{ include "fleetwatch.secretsDir" . }}.
{{- include "fleetwatch.toml.table" (dict "path" (list) "table" $settings) }}
{{ end -}}

{{- define "fleetwatch.probeScheme" -}}{{ ternary "HTTPS" "HTTP" (not (empty .Values.httpTls.secretName)) }}{{- end -}}

{{/*
Names. Kubernetes names are at most 63 characters: every name is truncated, and a component's
name keeps room for its suffix so two components never truncate to the same name.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "kafka-tenant-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-<chart>, or the release name alone when it already contains the chart name. */}}
{{- define "kafka-tenant-proxy.fullname" -}}
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

{{/* <fullname>-routes, 63 characters at most. */}}
{{- define "kafka-tenant-proxy.routes.fullname" -}}
{{- printf "%s-routes" (include "kafka-tenant-proxy.fullname" . | trunc 56 | trimSuffix "-") -}}
{{- end -}}

{{/* <fullname>-injector, 63 characters at most. */}}
{{- define "kafka-tenant-proxy.injector.fullname" -}}
{{- printf "%s-injector" (include "kafka-tenant-proxy.fullname" . | trunc 54 | trimSuffix "-") -}}
{{- end -}}

{{- define "kafka-tenant-proxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every resource; pass (dict "context" $ "component" "routes"). */}}
{{- define "kafka-tenant-proxy.labels" -}}
helm.sh/chart: {{ include "kafka-tenant-proxy.chart" .context }}
{{ include "kafka-tenant-proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .context.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
app.kubernetes.io/part-of: kafka-tenant-proxy
{{- with .context.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels: stable across upgrades (a Deployment's selector cannot change). */}}
{{- define "kafka-tenant-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kafka-tenant-proxy.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/* commonAnnotations merged with the given ones; renders nothing when both are empty. */}}
{{- define "kafka-tenant-proxy.annotations" -}}
{{- $all := merge (deepCopy (.extra | default dict)) (deepCopy (.context.Values.commonAnnotations | default dict)) -}}
{{- if $all }}
annotations:
  {{- toYaml $all | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The ktp image: registry/repository, then @digest or :tag (default appVersion). */}}
{{- define "kafka-tenant-proxy.image" -}}
{{- $image := .Values.image -}}
{{- $repository := ternary $image.repository (printf "%s/%s" $image.registry $image.repository) (empty $image.registry) -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (default .Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The sidecar's image: sidecar.image when set, else the chart's image. */}}
{{- define "kafka-tenant-proxy.sidecarImage" -}}
{{- $sidecar := .Values.sidecar.image -}}
{{- if $sidecar.repository -}}
{{- printf "%s:%s" $sidecar.repository (default (default .Chart.AppVersion .Values.image.tag) $sidecar.tag) -}}
{{- else if $sidecar.tag -}}
{{- $repository := ternary .Values.image.repository (printf "%s/%s" .Values.image.registry .Values.image.repository) (empty .Values.image.registry) -}}
{{- printf "%s:%s" $repository $sidecar.tag -}}
{{- else -}}
{{- include "kafka-tenant-proxy.image" . -}}
{{- end -}}
{{- end -}}

{{/* The sidecars' route source. */}}
{{- define "kafka-tenant-proxy.sidecarRoutes" -}}
{{- default (printf "kafka:%s" .Values.routes.topic) .Values.sidecar.routes -}}
{{- end -}}

{{- define "kafka-tenant-proxy.routes.serviceAccountName" -}}
{{- if .Values.routes.serviceAccount.create -}}
{{- default (include "kafka-tenant-proxy.routes.fullname" .) .Values.routes.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.routes.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kafka-tenant-proxy.injector.serviceAccountName" -}}
{{- if .Values.injector.serviceAccount.create -}}
{{- default (include "kafka-tenant-proxy.injector.fullname" .) .Values.injector.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.injector.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the route service's write token. */}}
{{- define "kafka-tenant-proxy.routes.tokenSecretName" -}}
{{- default (printf "%s-token" (include "kafka-tenant-proxy.routes.fullname" . | trunc 57 | trimSuffix "-")) .Values.routes.auth.existingSecret -}}
{{- end -}}

{{- define "kafka-tenant-proxy.routes.tokenSecretKey" -}}
{{- ternary .Values.routes.auth.existingSecretKey "token" (not (empty .Values.routes.auth.existingSecret)) -}}
{{- end -}}

{{/* The Secret holding the injector's serving certificate. */}}
{{- define "kafka-tenant-proxy.injector.tlsSecretName" -}}
{{- if eq .Values.injector.tls.mode "secret" -}}
{{- .Values.injector.tls.existingSecret -}}
{{- else -}}
{{- printf "%s-tls" (include "kafka-tenant-proxy.injector.fullname" . | trunc 59 | trimSuffix "-") -}}
{{- end -}}
{{- end -}}

{{/* In-cluster URL of the route service. */}}
{{- define "kafka-tenant-proxy.routes.url" -}}
{{- printf "http://%s.%s.svc:%v" (include "kafka-tenant-proxy.routes.fullname" .) .Release.Namespace .Values.routes.service.port -}}
{{- end -}}

{{/* Where the Kafka secrets are mounted in the route service (the same paths as the sidecar's). */}}
{{- define "kafka-tenant-proxy.secretsDir" -}}/var/run/secrets/kafka-tenant-proxy{{- end -}}

{{/*
KTP_* variables of the Kafka connection for a container that mounts the volumes of
"kafka-tenant-proxy.kafkaVolumes" with "kafka-tenant-proxy.kafkaVolumeMounts".
*/}}
{{- define "kafka-tenant-proxy.kafkaEnv" -}}
{{- $kafka := .Values.kafka -}}
{{- $dir := include "kafka-tenant-proxy.secretsDir" . -}}
- name: KTP_BOOTSTRAP_SERVERS
  value: {{ $kafka.bootstrapServers | quote }}
- name: KTP_SECURITY_PROTOCOL
  value: {{ $kafka.securityProtocol | quote }}
{{- if hasPrefix "SASL" $kafka.securityProtocol }}
- name: KTP_SASL_MECHANISM
  value: {{ $kafka.sasl.mechanism | quote }}
{{- end }}
{{- if $kafka.sasl.username }}
- name: KTP_SASL_USERNAME
  value: {{ $kafka.sasl.username | quote }}
{{- end }}
{{- if $kafka.sasl.passwordSecret.name }}
- name: KTP_SASL_PASSWORD_FILE
  value: {{ printf "%s/kafka-sasl/password" $dir | quote }}
{{- end }}
{{- if $kafka.tls.caSecret.name }}
- name: KTP_SSL_CAFILE
  value: {{ printf "%s/kafka-ca/ca.crt" $dir | quote }}
{{- end }}
{{- if $kafka.tls.clientCertSecret }}
- name: KTP_SSL_CERTFILE
  value: {{ printf "%s/kafka-client-cert/tls.crt" $dir | quote }}
- name: KTP_SSL_KEYFILE
  value: {{ printf "%s/kafka-client-cert/tls.key" $dir | quote }}
{{- end }}
{{- end -}}

{{- define "kafka-tenant-proxy.kafkaVolumes" -}}
{{- $kafka := .Values.kafka -}}
{{- if $kafka.sasl.passwordSecret.name }}
- name: ktp-kafka-sasl
  secret:
    secretName: {{ $kafka.sasl.passwordSecret.name }}
    items:
      - key: {{ $kafka.sasl.passwordSecret.key }}
        path: password
    defaultMode: 292
{{- end }}
{{- if $kafka.tls.caSecret.name }}
- name: ktp-kafka-ca
  secret:
    secretName: {{ $kafka.tls.caSecret.name }}
    items:
      - key: {{ $kafka.tls.caSecret.key }}
        path: ca.crt
    defaultMode: 292
{{- end }}
{{- if $kafka.tls.clientCertSecret }}
- name: ktp-kafka-client-cert
  secret:
    secretName: {{ $kafka.tls.clientCertSecret }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
    defaultMode: 292
{{- end }}
{{- end -}}

{{- define "kafka-tenant-proxy.kafkaVolumeMounts" -}}
{{- $kafka := .Values.kafka -}}
{{- $dir := include "kafka-tenant-proxy.secretsDir" . -}}
{{- if $kafka.sasl.passwordSecret.name }}
- name: ktp-kafka-sasl
  mountPath: {{ $dir }}/kafka-sasl
  readOnly: true
{{- end }}
{{- if $kafka.tls.caSecret.name }}
- name: ktp-kafka-ca
  mountPath: {{ $dir }}/kafka-ca
  readOnly: true
{{- end }}
{{- if $kafka.tls.clientCertSecret }}
- name: ktp-kafka-client-cert
  mountPath: {{ $dir }}/kafka-client-cert
  readOnly: true
{{- end }}
{{- end -}}

{{/* Spread a component's replicas over nodes unless the user set an affinity. */}}
{{- define "kafka-tenant-proxy.affinity" -}}
{{- if .affinity -}}
{{- toYaml .affinity -}}
{{- else -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "kafka-tenant-proxy.selectorLabels" (dict "context" .context "component" .component) | nindent 12 }}
{{- end -}}
{{- end -}}

{{/* topologySpreadConstraints, each given the component's pods as labelSelector unless it has one. */}}
{{- define "kafka-tenant-proxy.topologySpread" -}}
{{- $out := list -}}
{{- range $constraint := .constraints -}}
{{- $c := deepCopy $constraint -}}
{{- if not (hasKey $c "labelSelector") -}}
{{- $_ := set $c "labelSelector" (dict "matchLabels" (include "kafka-tenant-proxy.selectorLabels" (dict "context" $.context "component" $.component) | fromYaml)) -}}
{{- end -}}
{{- $out = append $out $c -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/*
The webhook's namespaceSelector: the user's selector (a YAML string, so that Helm replaces it
whole instead of merging it with the default) with the namespaces that must never wait on the
injector always excluded: the control plane's, and the injector's own (its pods could not be
created while it is down).
*/}}
{{- define "kafka-tenant-proxy.webhookNamespaceSelector" -}}
{{- $selector := (tpl .Values.injector.webhook.namespaceSelector .) | fromYaml | default dict -}}
{{- if hasKey $selector "Error" -}}
{{- fail (printf "injector.webhook.namespaceSelector: not a YAML map: %s" (get $selector "Error")) -}}
{{- end -}}
{{- $excluded := dict "key" "kubernetes.io/metadata.name" "operator" "NotIn" "values" (list "kube-system" "kube-public" "kube-node-lease" .Release.Namespace | uniq) -}}
{{- $_ := set $selector "matchExpressions" (append (get $selector "matchExpressions" | default list) $excluded) -}}
{{- toYaml $selector -}}
{{- end -}}

{{/* The webhook's objectSelector, from its YAML string; renders nothing when empty. */}}
{{- define "kafka-tenant-proxy.webhookObjectSelector" -}}
{{- $selector := (tpl .Values.injector.webhook.objectSelector .) | fromYaml | default dict -}}
{{- if hasKey $selector "Error" -}}
{{- fail (printf "injector.webhook.objectSelector: not a YAML map: %s" (get $selector "Error")) -}}
{{- end -}}
{{- if $selector -}}
{{- toYaml $selector -}}
{{- end -}}
{{- end -}}

{{/*
A resource quantity ("250m", "1.5", "128Mi", 2) in base units, as a float: for comparing a
request with its limit. The schema has already checked the form.
*/}}
{{- define "kafka-tenant-proxy.quantity" -}}
{{- $raw := toString . -}}
{{- $units := dict "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0 "k" 1000.0 "M" 1000000.0 "G" 1000000000.0 "T" 1000000000000.0 "P" 1000000000000000.0 "E" 1000000000000000000.0 "m" 0.001 -}}
{{- $factor := 1.0 -}}
{{- $number := $raw -}}
{{- range $suffix := list "Ki" "Mi" "Gi" "Ti" "Pi" "Ei" "k" "M" "G" "T" "P" "E" "m" -}}
{{- if and (eq $factor 1.0) (hasSuffix $suffix $raw) -}}
{{- $factor = index $units $suffix -}}
{{- $number = trimSuffix $suffix $raw -}}
{{- end -}}
{{- end -}}
{{- mulf (float64 $number) $factor -}}
{{- end -}}

{{/* A PodDisruptionBudget spec from a pdb value block. */}}
{{- define "kafka-tenant-proxy.pdbSpec" -}}
{{- if not (eq (toString .pdb.minAvailable) "") }}
minAvailable: {{ .pdb.minAvailable }}
{{- else }}
maxUnavailable: {{ .pdb.maxUnavailable }}
{{- end }}
selector:
  matchLabels:
    {{- include "kafka-tenant-proxy.selectorLabels" (dict "context" .context "component" .component) | nindent 4 }}
{{- end -}}

{{/*
Every check of the values that the schema cannot express, failed at once with all messages.
*/}}
{{- define "kafka-tenant-proxy.validateValues" -}}
{{- $messages := list -}}
{{- $kafka := .Values.kafka -}}
{{- if and (or .Values.routes.enabled .Values.injector.enabled) (empty $kafka.bootstrapServers) -}}
{{- $messages = append $messages "kafka.bootstrapServers: set the Kafka bootstrap servers (HOST:PORT,...)" -}}
{{- end -}}
{{- if hasPrefix "SASL" $kafka.securityProtocol -}}
{{- if empty $kafka.sasl.username -}}
{{- $messages = append $messages (printf "kafka.sasl.username: required with kafka.securityProtocol %s" $kafka.securityProtocol) -}}
{{- end -}}
{{- if empty $kafka.sasl.passwordSecret.name -}}
{{- $messages = append $messages (printf "kafka.sasl.passwordSecret.name: required with kafka.securityProtocol %s (a Secret holding the password)" $kafka.securityProtocol) -}}
{{- end -}}
{{- end -}}
{{- if and $kafka.tls.clientCertSecret (not (has $kafka.securityProtocol (list "SSL" "SASL_SSL"))) -}}
{{- $messages = append $messages "kafka.tls.clientCertSecret: needs kafka.securityProtocol SSL or SASL_SSL" -}}
{{- end -}}
{{- if .Values.injector.enabled -}}
{{- $tls := .Values.injector.tls -}}
{{- $injectsCA := hasKey (.Values.injector.webhook.annotations | default dict) "cert-manager.io/inject-ca-from" -}}
{{- if and (eq $tls.mode "secret") $tls.existingSecret (empty $tls.caBundle) (not $injectsCA) -}}
{{- $messages = append $messages "injector.tls.caBundle: required with injector.tls.existingSecret (the base64 PEM CA that signed it), unless injector.webhook.annotations has cert-manager.io/inject-ca-from" -}}
{{- end -}}
{{- if and $tls.caBundle (ne $tls.mode "secret") -}}
{{- $messages = append $messages "injector.tls.caBundle: only used with injector.tls.mode secret" -}}
{{- end -}}
{{- end -}}
{{- $resourceBlocks := list (list "sidecar.resources" .Values.sidecar.resources) (list "routes.resources" .Values.routes.resources) (list "injector.resources" .Values.injector.resources) -}}
{{- range $block := $resourceBlocks -}}
{{- $name := index $block 0 -}}
{{- $resources := index $block 1 | default dict -}}
{{- range $kind := list "cpu" "memory" -}}
{{- $request := toString (get ($resources.requests | default dict) $kind | default "") -}}
{{- $limit := toString (get ($resources.limits | default dict) $kind | default "") -}}
{{- if and $request $limit -}}
{{- if gt (include "kafka-tenant-proxy.quantity" $request | float64) (include "kafka-tenant-proxy.quantity" $limit | float64) -}}
{{- $messages = append $messages (printf "%s.requests.%s: %s is above %s.limits.%s %s; Kubernetes refuses such a container" $name $kind $request $name $kind $limit) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $ports := .Values.sidecar.ports -}}
{{- if or (eq (int $ports.admin) (int $ports.publish)) (eq (int $ports.admin) (int $ports.metrics)) (eq (int $ports.publish) (int $ports.metrics)) -}}
{{- $messages = append $messages (printf "sidecar.ports: admin %v, publish %v and metrics %v must be three different ports" $ports.admin $ports.publish $ports.metrics) -}}
{{- end -}}
{{- $auth := .Values.routes.auth -}}
{{- if and $auth.publicReads $auth.readTokenSecret.name -}}
{{- $messages = append $messages "routes.auth.readTokenSecret.name: has no use with routes.auth.publicReads; set one or the other" -}}
{{- end -}}
{{- if and (regexMatch "^https?://" (toString .Values.sidecar.routes)) (empty .Values.sidecar.routesTokenSecret.name) (not $auth.publicReads) -}}
{{- $messages = append $messages "sidecar.routesTokenSecret.name: sidecars reading routes over HTTP need the route service's read token (create a Secret with it in every application namespace and name it here), or set routes.auth.publicReads" -}}
{{- end -}}
{{- if .Values.injector.enabled -}}
{{- $tls := .Values.injector.tls -}}
{{- if and $tls.existingSecret (ne $tls.mode "secret") -}}
{{- $messages = append $messages (printf "injector.tls.existingSecret: only used with injector.tls.mode secret (the mode is %s)" $tls.mode) -}}
{{- end -}}
{{- if and (eq $tls.mode "secret") (empty $tls.existingSecret) -}}
{{- $messages = append $messages "injector.tls.existingSecret: required with injector.tls.mode secret (a kubernetes.io/tls Secret in the release namespace)" -}}
{{- end -}}
{{- end -}}
{{- range $component := list "routes" "injector" -}}
{{- $values := index $.Values $component -}}
{{- if and $values.enabled $values.pdb.enabled -}}
{{- $min := toString $values.pdb.minAvailable -}}
{{- if and (ne $min "") (not (hasSuffix "%" $min)) (ge (int $min) (int $values.replicaCount)) -}}
{{- $messages = append $messages (printf "%s.pdb.minAvailable: %s with %s.replicaCount %v would block every node drain; lower it or add replicas" $component $min $component $values.replicaCount) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $messages -}}
{{- fail (printf "\n\nVALUES VALIDATION:\n  - %s" (join "\n  - " $messages)) -}}
{{- end -}}
{{- end -}}

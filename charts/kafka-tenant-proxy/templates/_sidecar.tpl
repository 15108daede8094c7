{{/*
The sidecar without a webhook: teams include these templates in their own pod spec and get the
same ktp-sidecar container the injector would add (the tests check that they are equal).

Add this chart as a dependency of yours (its routes/injector may be disabled), then:

  spec:
    template:
      metadata:
        labels:
          {{- include "kafka-tenant-proxy.sidecarPodLabels" . | nindent 10 }}
        annotations:
          {{- include "kafka-tenant-proxy.sidecarPodAnnotations" . | nindent 10 }}
      spec:
        initContainers:
          {{- include "kafka-tenant-proxy.sidecar" (dict "chart" (index .Subcharts "kafka-tenant-proxy") "options" (dict
                "service" "orders-worker" "group" "orders-worker" "topics" "orders" "app-port" 8080)) | nindent 10 }}
        containers:
          - name: app
            ...
        volumes:
          {{- include "kafka-tenant-proxy.sidecarVolumes" (dict "chart" (index .Subcharts "kafka-tenant-proxy")) | nindent 10 }}

"options" takes the annotation names without their prefix: the sidecar's per-pod options
(service, sandbox, group, topics, app-url, ordering, ...) and app-port, app-path, native-sidecar,
admin-port, publish-port, metrics-port, cpu-request, cpu-limit, memory-request, memory-limit.
With a moved metrics-port, give the same port to sidecarPodAnnotations:
(dict "chart" ... "metrics-port" 9464), or leave the default. With "native-sidecar" "false", put the
container first under containers instead of initContainers. Inside this chart, pass
(dict "chart" $ ...).
*/}}

{{- define "kafka-tenant-proxy.sidecar" -}}
{{- $ctx := .chart -}}
{{- $v := $ctx.Values -}}
{{- $opts := .options | default dict -}}
{{- $platform := list "bootstrap-servers" "security-protocol" "sasl-mechanism" "sasl-username" "sasl-password-file" "ssl-cafile" "ssl-certfile" "ssl-keyfile" "admin-addr" "metrics-addr" "publish-addr" "app-token-file" "routes-token-file" -}}
{{- $own := list "app-port" "app-path" "app-url" "native-sidecar" "admin-port" "publish-port" "metrics-port" "cpu-request" "cpu-limit" "memory-request" "memory-limit" -}}
{{- range $key, $_ := $opts -}}
{{- if has $key $platform -}}
{{- fail (printf "kafka-tenant-proxy.sidecar: option %q comes from the chart's kafka and sidecar values, not from the pod" $key) -}}
{{- end -}}
{{- end -}}
{{- if and (hasKey $opts "instance-id") (ne (toString (get $opts "instance-id")) "none") -}}
{{- fail "kafka-tenant-proxy.sidecar: option \"instance-id\" would give every replica the same static member id; leave it out (the sidecar takes its pod's name) or set it to none" -}}
{{- end -}}
{{- range $required := list "service" "group" "topics" -}}
{{- if not (hasKey $opts $required) -}}
{{- fail (printf "kafka-tenant-proxy.sidecar: option %q is required" $required) -}}
{{- end -}}
{{- end -}}
{{- $appUrl := "" -}}
{{- if hasKey $opts "app-url" -}}
{{- if or (hasKey $opts "app-port") (hasKey $opts "app-path") -}}
{{- fail "kafka-tenant-proxy.sidecar: options app-url and app-port/app-path exclude each other" -}}
{{- end -}}
{{- $appUrl = toString (get $opts "app-url") -}}
{{- else if hasKey $opts "app-port" -}}
{{- $appUrl = printf "http://127.0.0.1:%s%s" (toString (get $opts "app-port")) (toString (get $opts "app-path" | default "/")) -}}
{{- else -}}
{{- fail "kafka-tenant-proxy.sidecar: option \"app-port\" (or \"app-url\") is required" -}}
{{- end -}}
{{- $native := $v.sidecar.nativeSidecar -}}
{{- if hasKey $opts "native-sidecar" -}}
{{- $native = eq (toString (get $opts "native-sidecar") | lower) "true" -}}
{{- end -}}
{{- $requests := dict -}}
{{- $limits := dict -}}
{{- range $kind := list "cpu" "memory" -}}
{{- $request := toString (get $opts (printf "%s-request" $kind) | default (get $v.sidecar.resources.requests $kind)) -}}
{{- $limit := toString (get $opts (printf "%s-limit" $kind) | default (get $v.sidecar.resources.limits $kind)) -}}
{{- if $request }}{{ $_ := set $requests $kind $request }}{{ end -}}
{{- if $limit }}{{ $_ := set $limits $kind $limit }}{{ end -}}
{{- end -}}
{{- $http := eq $v.sidecar.probes "http" -}}
{{- $adminPort := int (get $opts "admin-port" | default $v.sidecar.ports.admin) -}}
{{- $publishPort := int (get $opts "publish-port" | default $v.sidecar.ports.publish) -}}
{{- $metricsPort := int (get $opts "metrics-port" | default $v.sidecar.ports.metrics) -}}
{{- $mounts := include "kafka-tenant-proxy.sidecarVolumeMounts" $ctx -}}
- name: ktp-sidecar
  image: {{ include "kafka-tenant-proxy.sidecarImage" $ctx | quote }}
  imagePullPolicy: {{ $v.sidecar.image.pullPolicy }}
  args:
    - sidecar
  env:
    - name: POD_NAME
      valueFrom:
        fieldRef:
          apiVersion: v1
          fieldPath: metadata.name
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          apiVersion: v1
          fieldPath: metadata.namespace
    {{- include "kafka-tenant-proxy.kafkaEnv" $ctx | nindent 4 }}
    {{- range $key, $value := $opts }}
    {{- if not (has $key $own) }}
    - name: {{ printf "KTP_%s" ($key | upper | replace "-" "_") }}
      value: {{ toString $value | quote }}
    {{- end }}
    {{- end }}
    - name: KTP_APP_URL
      value: {{ $appUrl | quote }}
    {{- if not (hasKey $opts "routes") }}
    - name: KTP_ROUTES
      value: {{ include "kafka-tenant-proxy.sidecarRoutes" $ctx | quote }}
    {{- end }}
    {{- if and $v.sidecar.appMaxConcurrency (not (hasKey $opts "app-max-concurrency")) }}
    - name: KTP_APP_MAX_CONCURRENCY
      value: {{ $v.sidecar.appMaxConcurrency | toString | quote }}
    {{- end }}
    {{- if and (not (hasKey $opts "bulk-max-records")) (gt (int $v.sidecar.bulkMaxRecords) 0) }}
    - name: KTP_BULK_MAX_RECORDS
      value: {{ $v.sidecar.bulkMaxRecords | toString | quote }}
    {{- end }}
    {{- if $v.sidecar.routesTokenSecret.name }}
    - name: KTP_ROUTES_TOKEN_FILE
      value: {{ printf "%s/routes-token/token" (include "kafka-tenant-proxy.secretsDir" $ctx) | quote }}
    {{- end }}
    - name: KTP_PUBLISH_ADDR
      value: {{ printf "127.0.0.1:%d" $publishPort | quote }}
    - name: KTP_ADMIN_ADDR
      value: {{ printf "%s:%d" (ternary "0.0.0.0" "127.0.0.1" $http) $adminPort | quote }}
    - name: KTP_METRICS_ADDR
      value: {{ printf "0.0.0.0:%d" $metricsPort | quote }}
  ports:
    {{- if $http }}
    - name: ktp-admin
      containerPort: {{ $adminPort }}
      protocol: TCP
    {{- end }}
    - name: ktp-metrics
      containerPort: {{ $metricsPort }}
      protocol: TCP
    - name: ktp-publish
      containerPort: {{ $publishPort }}
      protocol: TCP
  readinessProbe:
    {{- include "kafka-tenant-proxy.sidecarProbe" (dict "http" $http "port" $adminPort "path" $v.sidecar.readinessPath) | nindent 4 }}
    periodSeconds: 5
    failureThreshold: 3
  livenessProbe:
    {{- include "kafka-tenant-proxy.sidecarProbe" (dict "http" $http "port" $adminPort "path" "/healthz") | nindent 4 }}
    periodSeconds: 10
    failureThreshold: 3
  resources:
    {{- if $requests }}
    requests:
      {{- toYaml $requests | nindent 6 }}
    {{- end }}
    {{- if $limits }}
    limits:
      {{- toYaml $limits | nindent 6 }}
    {{- end }}
  securityContext:
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    runAsNonRoot: true
    capabilities:
      drop:
        - ALL
    seccompProfile:
      type: RuntimeDefault
  terminationMessagePolicy: FallbackToLogsOnError
  {{- if $mounts }}
  volumeMounts:
    {{- $mounts | nindent 4 }}
  {{- end }}
  {{- if $native }}
  restartPolicy: Always
  {{- end }}
{{- end -}}

{{/* A probe of the sidecar's admin server: httpGet, or the python one-liner of exec mode. */}}
{{- define "kafka-tenant-proxy.sidecarProbe" -}}
{{- if .http -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
timeoutSeconds: 2
{{- else -}}
exec:
  command:
    - python
    - -c
    - {{ printf "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%d%s', timeout=2).status == 200 else 1)" .port .path | quote }}
timeoutSeconds: 3
{{- end -}}
{{- end -}}

{{/* Volumes the sidecar mounts (the Kafka secrets, the route service's read token); may render nothing. */}}
{{- define "kafka-tenant-proxy.sidecarVolumes" -}}
{{- include "kafka-tenant-proxy.kafkaVolumes" .chart -}}
{{- with .chart.Values.sidecar.routesTokenSecret }}
{{- if .name }}
- name: ktp-routes-token
  secret:
    secretName: {{ .name }}
    items:
      - key: {{ .key }}
        path: token
    defaultMode: 292
{{- end }}
{{- end }}
{{- end -}}

{{- define "kafka-tenant-proxy.sidecarVolumeMounts" -}}
{{- include "kafka-tenant-proxy.kafkaVolumeMounts" . -}}
{{- if .Values.sidecar.routesTokenSecret.name }}
- name: ktp-routes-token
  mountPath: {{ include "kafka-tenant-proxy.secretsDir" . }}/routes-token
  readOnly: true
{{- end }}
{{- end -}}

{{/* The label the PodMonitor selects pods with a sidecar by. */}}
{{- define "kafka-tenant-proxy.sidecarPodLabels" -}}
kafka-tenant-proxy.io/sidecar: "true"
{{- end -}}

{{/* Prometheus scrape annotations for the sidecar's metrics port. */}}
{{- define "kafka-tenant-proxy.sidecarPodAnnotations" -}}
{{- $values := .Values -}}
{{- if hasKey . "chart" -}}{{- $values = .chart.Values -}}{{- end -}}
{{- $port := get . "metrics-port" | default (index $values "kafka-tenant-proxy" | default $values).sidecar.ports.metrics -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ $port | toString | quote }}
prometheus.io/path: /metrics
{{- end -}}

{{/*
TOML for fleetwatch.toml. Helm's own toToml writes every number as a float (values are
float64 once parsed), which the service refuses for integer settings; this writes whole
numbers as integers (serde reads an integer into a float setting too) and quotes every key.
Call with (dict "path" (list) "table" $map).
*/}}
{{- define "fleetwatch.toml.scalar" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}{{ toJson $v }}
{{- else if kindIs "bool" $v -}}{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) -}}
{{- if eq (float64 (int64 $v)) (float64 $v) -}}{{ int64 $v }}{{- else -}}{{ $v }}{{- end -}}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) -}}{{ $v }}
{{- else -}}{{ fail (printf "fleetwatch.toml: cannot write %v (%s) as a TOML value" $v (kindOf $v)) }}
{{- end -}}
{{- end -}}

{{- define "fleetwatch.toml.key" -}}{{ toJson (toString .) }}{{- end -}}

{{- define "fleetwatch.toml.header" -}}
{{- $parts := list -}}
{{- range . -}}{{- $parts = append $parts (include "fleetwatch.toml.key" .) -}}{{- end -}}
{{- join "." $parts -}}
{{- end -}}

{{- define "fleetwatch.toml.isTableArray" -}}
{{- $v := . -}}
{{- if and (kindIs "slice" $v) (gt (len $v) 0) (kindIs "map" (index $v 0)) -}}true{{- end -}}
{{- end -}}

{{- define "fleetwatch.toml.table" -}}
{{- $path := .path -}}
{{- $table := .table -}}
{{- range $key := keys $table | sortAlpha -}}
{{- $v := get $table $key -}}
{{- if and (not (kindIs "invalid" $v)) (not (kindIs "map" $v)) (not (include "fleetwatch.toml.isTableArray" $v)) -}}
{{- if kindIs "slice" $v }}
{{ include "fleetwatch.toml.key" $key }} = [{{ range $i, $item := $v }}{{ if $i }}, {{ end }}{{ include "fleetwatch.toml.scalar" $item }}{{ end }}]
{{- else }}
{{ include "fleetwatch.toml.key" $key }} = {{ include "fleetwatch.toml.scalar" $v }}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $key := keys $table | sortAlpha -}}
{{- $v := get $table $key -}}
{{- $sub := append $path $key -}}
{{- if kindIs "map" $v }}

[{{ include "fleetwatch.toml.header" $sub }}]
{{- include "fleetwatch.toml.table" (dict "path" $sub "table" $v) -}}
{{- else if include "fleetwatch.toml.isTableArray" $v -}}
{{- range $item := $v }}

[[{{ include "fleetwatch.toml.header" $sub }}]]
{{- include "fleetwatch.toml.table" (dict "path" $sub "table" $item) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

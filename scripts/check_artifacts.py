#!/usr/bin/env python3
"""Offline checks of svc's deployment artifacts that no off-the-shelf tool makes.

    check_artifacts.py manifests RENDERED.yaml...   custom resources (KEDA, Prometheus
                                                    Operator) against the parts of their
                                                    CRD schemas svc uses, plus cross-object
                                                    references (Secrets, ConfigMaps, ports)
    check_artifacts.py compose FILE.yaml ENV_FILE   every service, health checks, start order
    check_artifacts.py dashboard FILE.json          Grafana dashboard: panels and queries
    check_artifacts.py dockerfile DOCKERFILE        multi-stage, non-root, one binary

Every metric named in the dashboard or the alert rules must be one svc (or
RabbitMQ, or Prometheus) exports, so a renamed metric breaks CI, not a
dashboard in production.
"""

import json
import pathlib
import re
import sys

import jsonschema
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
failures: list[str] = []


def fail(message: str) -> None:
    failures.append(message)


def svc_metric_names() -> set[str]:
    """Metric names declared in src/metrics.rs, with Prometheus's histogram suffixes."""
    source = (ROOT / "src" / "metrics.rs").read_text()
    names = set(re.findall(r'const [A-Z_]+: &str = "([a-z_]+)";', source))
    expanded = set(names)
    for name in names:
        expanded |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return expanded


# Metrics from elsewhere that the dashboard may use.
FOREIGN_METRICS = {"up", "rabbitmq_queue_messages_ready"}
PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "clamp_min", "max", "min",
    "absent", "deriv", "and", "or", "unless", "on", "without", "avg", "count", "irate",
}
# Label names that appear outside braces, in `by (...)`.
LABELS = {"le", "job", "route", "queue", "method", "status", "reason", "outcome"}


def check_promql_metrics(where: str, expr: str, known: set[str]) -> None:
    stripped = re.sub(r'"[^"]*"', '""', expr)  # label values
    stripped = re.sub(r"\{[^}]*\}", "", stripped)  # label matchers
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)  # ranges
    stripped = re.sub(r"(?<![a-zA-Z_])\d+(?:\.\d+)?(?:e[-+]?\d+)?", "", stripped)  # numbers
    for word in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", stripped):
        if word in PROMQL_WORDS or word in LABELS or word in FOREIGN_METRICS or word in known:
            continue
        fail(f"{where}: unknown metric or function `{word}` in `{expr}`")


# --- Kubernetes custom resources --------------------------------------------

def closed(properties: dict, required: tuple[str, ...] = ()) -> dict:
    """An object schema that allows only `properties`, so a misspelt field fails."""
    return {"type": "object", "additionalProperties": False, "required": list(required),
            "properties": properties}


def resource(spec: dict) -> dict:
    """A custom resource whose `spec` follows `spec`; metadata is Kubernetes's own."""
    return {"type": "object", "required": ["spec"], "properties": {"spec": spec}}


STRING = {"type": "string"}
NAMED_REF = closed({"name": STRING, "kind": STRING}, required=("name",))

SCALED_OBJECT = resource(closed({
    "scaleTargetRef": closed({"name": STRING, "kind": STRING, "apiVersion": STRING}, required=("name",)),
    "minReplicaCount": {"type": "integer", "minimum": 0},
    "maxReplicaCount": {"type": "integer", "minimum": 1},
    "pollingInterval": {"type": "integer", "minimum": 1},
    "cooldownPeriod": {"type": "integer", "minimum": 0},
    "idleReplicaCount": {"type": "integer"},
    "triggers": {"type": "array", "minItems": 1, "items": closed({
        "type": {"enum": ["rabbitmq"]},
        "name": STRING,
        "metadata": closed({
            "protocol": {"enum": ["amqp", "http", "auto"]},
            "queueName": STRING,
            "mode": {"enum": ["QueueLength", "MessageRate"]},
            "value": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"},
            "activationValue": STRING,
            "vhostName": STRING,
        }, required=("queueName", "mode", "value")),
        "authenticationRef": NAMED_REF,
    }, required=("type", "metadata"))},
}, required=("scaleTargetRef", "triggers")))

TRIGGER_AUTHENTICATION = resource(closed({
    "secretTargetRef": {"type": "array", "items": closed(
        {"parameter": STRING, "name": STRING, "key": STRING}, required=("parameter", "name", "key"))},
}))

SERVICE_MONITOR = resource(closed({
    "jobLabel": STRING,
    "selector": {"type": "object", "properties": {"matchLabels": {"type": "object"}}},
    "endpoints": {"type": "array", "minItems": 1, "items": closed({
        "port": STRING,
        "path": STRING,
        "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
    })},
}, required=("selector", "endpoints")))

CUSTOM = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TRIGGER_AUTHENTICATION,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
}


def pod_specs(objects):
    for obj in objects:
        spec = obj.get("spec", {})
        if obj["kind"] in ("Deployment", "Job"):
            yield obj, spec["template"]["spec"]


def check_manifests(paths: list[str]) -> None:
    for path in paths:
        objects = [o for o in yaml.safe_load_all(pathlib.Path(path).read_text()) if o]
        by_kind: dict[str, dict[str, dict]] = {}
        for obj in objects:
            by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
            schema = CUSTOM.get((obj["apiVersion"], obj["kind"]))
            if schema:
                try:
                    jsonschema.validate(obj, schema)
                except jsonschema.ValidationError as err:
                    fail(f"{path}: {obj['kind']}/{obj['metadata']['name']}: {err.message}")
        deployments = by_kind.get("Deployment", {})
        for obj, spec in pod_specs(objects):
            name = f"{path}: {obj['kind']}/{obj['metadata']['name']}"
            pod_security = spec.get("securityContext", {})
            if not pod_security.get("runAsNonRoot"):
                fail(f"{name}: pods must run as non-root")
            for container in spec["containers"]:
                security = container.get("securityContext", {})
                if not security.get("readOnlyRootFilesystem"):
                    fail(f"{name}: {container['name']} needs a read-only root filesystem")
                if security.get("allowPrivilegeEscalation", True):
                    fail(f"{name}: {container['name']} must not allow privilege escalation")
                resources = container.get("resources", {})
                if not resources.get("requests") or not resources.get("limits"):
                    fail(f"{name}: {container['name']} needs resource requests and limits")
                for source in container.get("envFrom", []):
                    if "configMapRef" in source and source["configMapRef"]["name"] not in by_kind.get("ConfigMap", {}):
                        fail(f"{name}: ConfigMap {source['configMapRef']['name']} is not rendered")
                if obj["kind"] == "Deployment":
                    if not (container.get("readinessProbe") and container.get("livenessProbe")):
                        fail(f"{name}: {container['name']} needs readiness and liveness probes")
                    ports = {p["name"] for p in container.get("ports", [])}
                    for probe in ("readinessProbe", "livenessProbe"):
                        port = container[probe]["httpGet"]["port"]
                        if port not in ports:
                            fail(f"{name}: {probe} uses unknown port {port}")
        for scaled in by_kind.get("ScaledObject", {}).values():
            target = scaled["spec"]["scaleTargetRef"]["name"]
            if target not in deployments:
                fail(f"{path}: ScaledObject targets missing Deployment {target}")
            queue = scaled["spec"]["triggers"][0]["metadata"].get("queueName")
            prefix = by_kind["ConfigMap"]["svc-config"]["data"].get("SVC_QUEUE_PREFIX", "svc")
            if queue != f"{prefix}.data.ingest":
                fail(f"{path}: KEDA watches {queue}, but svc consumes {prefix}.data.ingest")
        for hpa in by_kind.get("HorizontalPodAutoscaler", {}).values():
            if hpa["spec"]["scaleTargetRef"]["name"] not in deployments:
                fail(f"{path}: HPA targets a missing Deployment")
        for service in by_kind.get("Service", {}).values():
            selector = service["spec"]["selector"]
            matching = [
                d for d in deployments.values()
                if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
            ]
            if not matching:
                fail(f"{path}: Service {service['metadata']['name']} selects no pods")
        if "svc-prometheus-alerts" not in by_kind.get("ConfigMap", {}):
            fail(f"{path}: the alert rules ConfigMap is missing")


def check_alert_metrics(path: str) -> None:
    known = svc_metric_names()
    for group in yaml.safe_load(pathlib.Path(path).read_text())["groups"]:
        for rule in group["rules"]:
            check_promql_metrics(f"{path}: {rule['alert']}", rule["expr"], known)


# --- compose ----------------------------------------------------------------

def check_compose(path: str, env_file: str) -> None:
    compose = yaml.safe_load(pathlib.Path(path).read_text())
    services = compose["services"]
    wanted = {
        "postgres", "postgres-replica", "pgbouncer", "redis", "rabbitmq",
        "migrate", "serve", "consume", "prometheus", "grafana",
    }
    for missing in sorted(wanted - services.keys()):
        fail(f"{path}: no `{missing}` service")
    env_names = {
        line.split("=", 1)[0]
        for line in pathlib.Path(env_file).read_text().splitlines()
        if line and not line.startswith("#")
    }
    text = pathlib.Path(path).read_text()
    for variable in set(re.findall(r"\$\{([A-Z_]+)(?::-[^}]*)?\}", text)):
        if variable not in env_names and not re.search(r"\$\{" + variable + r":-", text):
            fail(f"{path}: ${{{variable}}} is not in {env_file}")
    svc_image = {"migrate", "serve", "consume"}
    for name, service in services.items():
        # svc's image is distroless (no shell): its health is probed over HTTP
        # by nginx and Prometheus; every other service has a health check.
        if name not in svc_image and "healthcheck" not in service:
            fail(f"{path}: `{name}` has no healthcheck")
        depends_on = service.get("depends_on") or {}
        if isinstance(depends_on, list):  # the short form: started, with no condition
            depends_on = dict.fromkeys(depends_on)
        for dependency, condition in depends_on.items():
            if dependency not in services:
                fail(f"{path}: `{name}` depends on unknown `{dependency}`")
            if condition is None:
                continue
            wanted_condition = (
                "service_completed_successfully" if dependency == "migrate" else "service_healthy"
            )
            if condition.get("condition") != wanted_condition:
                fail(f"{path}: `{name}` should wait for `{dependency}` with {wanted_condition}")
    if services.get("serve", {}).get("deploy", {}).get("replicas", 1) < 2:
        fail(f"{path}: `serve` should run more than one replica")
    for name in ("serve", "consume"):
        depends = services.get(name, {}).get("depends_on", {})
        if "migrate" not in depends:
            fail(f"{path}: `{name}` must start after `migrate`")
    serve_env = services.get("serve", {}).get("environment", {})
    if "pgbouncer" not in str(serve_env.get("DATABASE_READ_URL", "")):
        fail(f"{path}: serve must read through PgBouncer")
    prometheus = (ROOT / "compose" / "prometheus" / "prometheus.yml").read_text()
    for job in ("svc-serve", "svc-consume"):
        if f"job_name: {job}" not in prometheus:
            fail(f"compose/prometheus/prometheus.yml: no scrape job {job} (the alerts need it)")


# --- Grafana ------------------------------------------------------------------

def check_dashboard(path: str) -> None:
    dashboard = json.loads(pathlib.Path(path).read_text())
    known = svc_metric_names()
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for subject in ("request rate", "latency", "error rate", "cache hit", "queue depth", "lag", "dead-letter"):
        if subject not in titles:
            fail(f"{path}: no panel about {subject}")
    ids = [p["id"] for p in dashboard["panels"]]
    if len(ids) != len(set(ids)):
        fail(f"{path}: panel ids repeat")
    for panel in dashboard["panels"]:
        if not panel.get("targets"):
            fail(f"{path}: panel {panel['title']} has no query")
        for target in panel.get("targets", []):
            check_promql_metrics(f"{path}: {panel['title']}", target["expr"], known)


# --- Dockerfile ---------------------------------------------------------------

def check_dockerfile(path: str) -> None:
    lines = [
        line.strip() for line in pathlib.Path(path).read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    stages = [line for line in lines if line.upper().startswith("FROM ")]
    if len(stages) < 2:
        fail(f"{path}: not a multi-stage build")
    for stage in stages:
        image = stage.split()[1]
        if image.endswith(":latest") or (":" not in image and "${" not in image and image not in ("deps", "build")):
            fail(f"{path}: unpinned base image {image}")
    final = lines[lines.index(stages[-1]):]
    if "distroless" not in stages[-1]:
        fail(f"{path}: the runtime stage should be distroless")
    users = [line for line in final if line.upper().startswith("USER ")]
    if not users or users[-1].split()[1].split(":")[0] in ("root", "0"):
        fail(f"{path}: the runtime stage must switch to a non-root user")
    if not any(line.startswith("ENTRYPOINT") and "svc" in line for line in final):
        fail(f"{path}: the entrypoint should be the svc binary")
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    for line in lines:
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                if not (ROOT / source).exists():
                    fail(f"{path}: COPY of missing {source}")
                if not any(source.rstrip("/") == a or source.startswith(a + "/") for a in allowed):
                    fail(f"{path}: {source} is excluded by .dockerignore")


def main() -> int:
    command, *args = sys.argv[1:]
    if command == "manifests":
        check_manifests(args)
        check_alert_metrics(str(ROOT / "deploy" / "base" / "alerts.yml"))
    elif command == "compose":
        check_compose(*args)
    elif command == "dashboard":
        check_dashboard(*args)
    elif command == "dockerfile":
        check_dockerfile(*args)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for failure in failures:
        print(f"check_artifacts: {failure}", file=sys.stderr)
    if not failures:
        print(f"check_artifacts: {command} ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

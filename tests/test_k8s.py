"""The Kubernetes and KServe manifests (deploy/k8s, deploy/kserve), checked without a
cluster: every kustomization renders; every rendered object validates against the
Kubernetes OpenAPI schemas (kubernetes-validate, offline) or, for the two custom kinds,
against a minimal schema written here plus the core schemas for the pod inside; checkov
finds nothing, or a skip that says why; and the numbers agree with the service: probe
paths and ports, the drain and the grace period, and every VAE_* variable is a setting
of server/settings.py, so a renamed setting fails here.

Rendering needs `kubectl` (or `kustomize`); the scan needs checkov, which lives in an
environment of its own (bash deploy/k8s/install-checkov.sh). Without them those tests
are skipped and say so.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.k8s_rayjob import RAY_JOB, rayjob_pods
from vae_service.server.model_entries import NAME, SUFFIX
from vae_service.server.settings import Settings, env_name

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
KSERVE = ROOT / "deploy" / "kserve"
Doc = dict[str, Any]

# What `kubectl apply -k` is pointed at; "cpu+components" is the cpu overlay with the
# optional components (ServiceMonitor, queue-depth HPA) added, as docs/kubernetes.md says.
KUSTOMIZATIONS = {
    "cpu": K8S / "overlays" / "cpu",
    "gpu": K8S / "overlays" / "gpu",
    "jobs": K8S / "jobs",
    "ray": K8S / "ray",
    "kserve": KSERVE,
}
COMPONENTS = [K8S / "components" / "prometheus-operator", K8S / "components" / "queue-depth-hpa"]
# The oldest Kubernetes the manifests are for (matchLabelKeys in topology spread is beta
# and on by default from 1.27) and the newest one kubernetes-validate knows.
K8S_VERSIONS = ["1.27", kubernetes_validate.latest_version()]
UID = 10001  # the Dockerfile's `useradd --uid 10001 ... vae`
# checkov checks skipped on purpose; each skip carries its reason in the manifest.
ALLOWED_SKIPS = {"CKV_K8S_15", "CKV_K8S_35", "CKV_K8S_43"}
# vae-serve, launch to the first 200 from /readyz, bundled weights (docs/kubernetes.md):
# 4.2-5.0 s on 2 CPUs of the development machine, 4.8-5.8 s on 1 with torch; with
# VAE_BACKEND=auto and an empty ONNX cache (every container start) 7.6-8.0 s and 8.9 s;
# 7.0-8.8 s on an H100.
MEASURED_STARTUP_S = {"cpu": 8.9, "gpu": 8.8}
SETTINGS_VARIABLES = {env_name(field) for field in Settings.model_fields}
CHECKOV_VERSION = "3.3.30"


# --- rendering -------------------------------------------------------------------------


def kustomize_command() -> list[str]:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    pytest.skip("neither kubectl nor kustomize is installed: cannot render the manifests")


def render(folder: Path) -> list[Doc]:
    done = subprocess.run(
        [*kustomize_command(), str(folder)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"{folder}: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    out = {name: render(folder) for name, folder in KUSTOMIZATIONS.items()}
    # An overlay with the components, in a folder of its own: kustomize wants the paths
    # relative (it refuses absolute ones) and the files inside the tree.
    folder = tmp_path_factory.mktemp("with-components")
    relative = lambda path: os.path.relpath(path, folder)  # noqa: E731
    (folder / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "vae",
                "resources": [relative(KUSTOMIZATIONS["cpu"])],
                "components": [relative(path) for path in COMPONENTS],
            }
        )
    )
    out["cpu+components"] = render(folder)
    return out


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def all_docs(rendered: dict[str, list[Doc]]) -> Iterator[tuple[str, Doc]]:
    for name, docs in rendered.items():
        for doc in docs:
            yield name, doc


# The pod inside each workload: (where, pod metadata, pod spec).
POD_FIELDS_OF_KSERVE_COMPONENT = {
    # v1beta1.ComponentExtensionSpec: the fields of a predictor that are not a PodSpec's.
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "scaleMetricType",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "labels",
    "annotations",
    "deploymentStrategy",
    "autoScaling",
    "workerSpec",
    "model",
    "storageUri",
    "storage",
}


def predictor_pod_spec(isvc: Doc) -> Doc:
    """The PodSpec inlined in the predictor (KServe's PredictorSpec embeds one)."""
    predictor = isvc["spec"]["predictor"]
    return {k: v for k, v in predictor.items() if k not in POD_FIELDS_OF_KSERVE_COMPONENT}


def pods(rendered: dict[str, list[Doc]]) -> Iterator[tuple[str, Doc]]:
    for where, doc in all_docs(rendered):
        if doc["kind"] in ("Deployment", "Job"):
            yield f"{where}/{doc['kind']}", doc["spec"]["template"]["spec"]
        elif doc["kind"] == "InferenceService":
            yield f"{where}/InferenceService", predictor_pod_spec(doc)
        elif doc["kind"] == "RayJob":
            for name, spec in rayjob_pods(doc):
                yield f"{where}/RayJob/{name}", spec


def containers(pod: Doc) -> list[Doc]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def env_of(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def serving_container(pod: Doc) -> Doc:
    (container,) = pod["containers"]
    return container


def listen_port(container: Doc) -> int:
    """The port vae-serve listens on: its --port flag, else VAE_PORT, else the default."""
    command = [*container.get("command", []), *container.get("args", [])]
    if "--port" in command:
        return int(command[command.index("--port") + 1])
    variable = env_of(container).get("VAE_PORT", {}).get("value")
    return int(variable) if variable else Settings.model_fields["port"].default


def probe_port(container: Doc, probe: Doc) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def cpus(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def setting_default(field: str) -> Any:
    return Settings.model_fields[field].default


def seconds_setting(container: Doc, field: str) -> float:
    value = env_of(container).get(env_name(field), {}).get("value")
    return float(value) if value else float(setting_default(field))


def prestop_sleep_s(container: Doc) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop")
    if pre_stop is None:
        return 0.0
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] in ("/bin/sleep", "sleep"), command
    return float(command[1])


# --- rendering and schemas -------------------------------------------------------------


def test_every_kustomization_renders(rendered: dict[str, list[Doc]]) -> None:
    kinds = {name: sorted({d["kind"] for d in docs}) for name, docs in rendered.items()}
    workload = ["Deployment", "HorizontalPodAutoscaler", "Namespace", "NetworkPolicy"]
    for overlay in ("cpu", "gpu"):
        assert set(workload) <= set(kinds[overlay]), kinds[overlay]
        assert {"PodDisruptionBudget", "Service", "PersistentVolumeClaim"} <= set(kinds[overlay])
    assert "ServiceMonitor" in kinds["cpu+components"]
    assert "Job" in kinds["jobs"]
    assert "InferenceService" in kinds["kserve"]
    assert "RayJob" in kinds["ray"]
    for where, doc in all_docs(rendered):
        namespace = doc["metadata"]["name" if doc["kind"] == "Namespace" else "namespace"]
        assert namespace == "vae", f"{where}: {doc['kind']} {doc['metadata']['name']}"


# Minimal schemas for the two custom kinds, from their CRDs' fields that the manifests use
# (prometheus-operator's monitoring.coreos.com/v1 ServiceMonitor; KServe's
# serving.kserve.io/v1beta1 InferenceService). Unknown fields are refused, so a typo fails.
DURATION = (
    "^(0|" + "".join(rf"(([0-9]+){unit})?" for unit in ("y", "w", "d", "h", "m", "s", "ms")) + ")$"
)
SECRET_KEY = {
    "type": "object",
    "required": ["name", "key"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "key": {"type": "string"},
        "optional": {"type": "boolean"},
    },
}
LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array"},
    },
}
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": LABEL_SELECTOR,
                "namespaceSelector": {"type": "object"},
                "jobLabel": {"type": "string"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"type": ["string", "integer"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                            "honorLabels": {"type": "boolean"},
                            "authorization": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "type": {"type": "string"},
                                    "credentials": SECRET_KEY,
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
INFERENCE_SERVICE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": {
            **METADATA,
            "properties": {
                **METADATA["properties"],
                "annotations": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "properties": {
                        "serving.kserve.io/deploymentMode": {
                            "enum": ["RawDeployment", "Standard", "Serverless", "Knative"]
                        },
                        "serving.kserve.io/autoscalerClass": {
                            "enum": ["hpa", "external", "keda", "none"]
                        },
                    },
                },
            },
        },
        "spec": {
            "type": "object",
            "required": ["predictor"],
            "additionalProperties": False,
            "properties": {
                "predictor": {
                    # The pod fields are checked against the core PodSpec schema below.
                    "type": "object",
                    "properties": {
                        "minReplicas": {"type": "integer", "minimum": 0},
                        "maxReplicas": {"type": "integer", "minimum": 1},
                        "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
                        "scaleTarget": {"type": "integer", "minimum": 1},
                        "annotations": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        },
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                },
            },
        },
    },
}
CUSTOM_SCHEMAS = {
    "ServiceMonitor": SERVICE_MONITOR,
    "InferenceService": INFERENCE_SERVICE,
    "RayJob": RAY_JOB,
}


def embedded_pods(doc: Doc) -> list[Doc]:
    """The PodSpecs inside a custom kind, each as a core Pod."""
    if doc["kind"] == "InferenceService":
        specs = [predictor_pod_spec(doc)]
    else:
        specs = [spec for _, spec in rayjob_pods(doc)] if doc["kind"] == "RayJob" else []
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": doc["metadata"]["name"]}}
    return [{**pod, "spec": spec} for spec in specs]


def validate_core(doc: Doc, version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = "/".join(str(p) for p in error.absolute_path)
        raise AssertionError(
            f"{doc['kind']} {doc['metadata']['name']} (Kubernetes {error.version}): "
            f"{path}: {error.message}"
        ) from None


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_against_the_schemas(
    rendered: dict[str, list[Doc]], version: str
) -> None:
    checked = 0
    for _where, doc in all_docs(rendered):
        if doc["kind"] in CUSTOM_SCHEMAS:
            jsonschema.validate(doc, CUSTOM_SCHEMAS[doc["kind"]])
            for pod in embedded_pods(doc):  # the pods inside, as core Pods
                validate_core(pod, version)
        else:
            validate_core(doc, version)  # SchemaNotFoundError for a kind it does not know
        checked += 1
    assert checked >= 30


def test_the_minimal_schemas_refuse_typos(rendered: dict[str, list[Doc]]) -> None:
    monitor = copy.deepcopy(one(rendered["cpu+components"], "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, SERVICE_MONITOR)
    isvc = copy.deepcopy(one(rendered["kserve"], "InferenceService"))
    serving_container(isvc["spec"]["predictor"])["readinesProbe"] = {}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}
    with pytest.raises(AssertionError, match="readinesProbe"):
        validate_core({**pod, "spec": predictor_pod_spec(isvc)}, K8S_VERSIONS[-1])


# --- the policy scanner ----------------------------------------------------------------


def checkov_executable() -> str:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    for candidate in (
        os.environ.get("CHECKOV"),
        shutil.which("checkov"),
        str(cache / "vae-service" / f"checkov-{CHECKOV_VERSION}" / "bin" / "checkov"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip(
        "checkov is not installed: bash deploy/k8s/install-checkov.sh (its own "
        "environment, ~290 MB, about a minute), or set CHECKOV"
    )


def as_deployment(isvc: Doc) -> Doc:
    """The InferenceService's predictor pod as a Deployment, for the scanner: checkov
    knows no InferenceService, and KServe makes a Deployment of it (raw mode) anyway."""
    labels = {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": isvc["metadata"]["name"] + "-predictor",
            "namespace": isvc["metadata"]["namespace"],
            "annotations": isvc["metadata"]["annotations"],
        },
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": predictor_pod_spec(isvc)},
        },
    }


@pytest.fixture(scope="module")
def checkov_report(
    rendered: dict[str, list[Doc]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    checkov = checkov_executable()
    folder = tmp_path_factory.mktemp("scan")
    files = []
    for name, docs in rendered.items():
        path = folder / f"{name.replace('+', '-')}.yaml"
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        files += ["--file", str(path)]
    predictor = as_deployment(one(rendered["kserve"], "InferenceService"))
    (folder / "kserve-predictor.yaml").write_text(yaml.safe_dump(predictor, sort_keys=False))
    files += ["--file", str(folder / "kserve-predictor.yaml")]
    done = subprocess.run(
        # --skip-download: no call to the vendor's platform; the checks ship in the package.
        [checkov, *files, "--framework", "kubernetes", "--skip-download", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "LOG_LEVEL": "WARNING"},
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: some check failed
    report = json.loads(done.stdout)
    (report,) = report if isinstance(report, list) else [report]
    return dict(report)


def test_checkov_finds_nothing(checkov_report: dict[str, Any]) -> None:
    summary = checkov_report["summary"]
    failed = [
        f"{c['check_id']} {c['resource']}: {c['check_name']}"
        for c in checkov_report["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    assert summary["parsing_errors"] == 0
    # The workloads were really scanned: 3 Deployments (cpu, gpu, cpu+components),
    # the KServe predictor and the Job, each against dozens of checks.
    assert summary["resource_count"] >= 20 and summary["passed"] >= 200, summary


def test_every_checkov_skip_is_expected_and_says_why(checkov_report: dict[str, Any]) -> None:
    skipped = checkov_report["results"]["skipped_checks"]
    assert skipped, "the manifests' skip annotations were not seen"
    for check in skipped:
        assert check["check_id"] in ALLOWED_SKIPS, check["check_id"]
        reason = check["check_result"].get("suppress_comment") or ""
        assert len(reason) > 20, f"{check['check_id']} on {check['resource']}: no reason"


def test_skip_annotations_give_a_reason(rendered: dict[str, list[Doc]]) -> None:
    """Also without checkov: every checkov.io/skip annotation is CKV_ID=reason."""
    seen = 0
    for _where, doc in all_docs(rendered):
        for key, value in doc["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert check in ALLOWED_SKIPS and len(reason) > 20, value
                seen += 1
    assert seen >= 8


# --- the service's own numbers ---------------------------------------------------------


def api_deployments(rendered: dict[str, list[Doc]]) -> Iterator[tuple[str, Doc]]:
    for name in ("cpu", "gpu", "cpu+components"):
        yield name, one(rendered[name], "Deployment", "vae-service")["spec"]["template"]


def serving_pods(rendered: dict[str, list[Doc]]) -> Iterator[tuple[str, Doc]]:
    for name, template in api_deployments(rendered):
        yield name, template["spec"]
    yield "kserve", predictor_pod_spec(one(rendered["kserve"], "InferenceService"))


def test_probes_ports_and_paths(rendered: dict[str, list[Doc]]) -> None:
    for where, pod in serving_pods(rendered):
        container = serving_container(pod)
        port = listen_port(container)
        assert [p["containerPort"] for p in container["ports"]] == [port], where
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz", where
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", where
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", where
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert probe_port(container, container[probe]) == port, f"{where} {probe}"
            assert container[probe]["timeoutSeconds"] < container[probe]["periodSeconds"] + 1
        # Liveness is not checked before start-up is over, and the start-up probe allows
        # far more than the measured start.
        startup = container["startupProbe"]
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        measured_s = MEASURED_STARTUP_S["gpu" if where == "gpu" else "cpu"]
        assert budget >= 10 * measured_s, where
    assert listen_port(serving_container(dict(serving_pods(rendered))["cpu"])) == 8000
    assert listen_port(serving_container(dict(serving_pods(rendered))["kserve"])) == 8080


def test_probe_and_scrape_paths_are_routes_and_probes_need_no_key(
    rendered: dict[str, list[Doc]],
) -> None:
    from vae_service.server.auth import OPEN_PATHS
    from vae_service.server.routes import all_routers

    routes = {getattr(route, "path", None) for router in all_routers() for route in router.routes}
    assert "/metrics" in routes
    for where, pod in serving_pods(rendered):
        container = serving_container(pod)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            path = container[probe]["httpGet"]["path"]
            # The API keys are on (from the Secret): a probe that needed one would fail.
            assert path in routes and path in OPEN_PATHS, f"{where} {probe} {path}"


def test_service_monitor_and_annotations_reach_the_metrics_port(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = rendered["cpu+components"]
    template = one(docs, "Deployment", "vae-service")["spec"]["template"]
    container = serving_container(template["spec"])
    service = one(docs, "Service", "vae-service")
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in [p["name"] for p in container["ports"]]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == "vae"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"
    # The scraper's key is one of the keys VAE_API_KEYS is built from.
    credentials = endpoint["authorization"]["credentials"]
    refs = {
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container["env"]
        if "valueFrom" in e
    }
    assert (credentials["name"], credentials["key"]) in refs
    isvc = one(rendered["kserve"], "InferenceService")
    kserve_template = {
        "metadata": {"annotations": isvc["spec"]["predictor"]["annotations"]},
        "spec": predictor_pod_spec(isvc),
    }
    for where, pod_template in [*api_deployments(rendered), ("kserve", kserve_template)]:
        annotations = pod_template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", where
        assert annotations["prometheus.io/path"] == "/metrics", where
        assert int(annotations["prometheus.io/port"]) == listen_port(
            serving_container(pod_template["spec"])
        ), where


def test_grace_period_outlasts_prestop_and_drain(rendered: dict[str, list[Doc]]) -> None:
    for where, pod in serving_pods(rendered):
        container = serving_container(pod)
        drain_s = seconds_setting(container, "graceful_shutdown_s")
        pre_stop_s = prestop_sleep_s(container)
        assert pre_stop_s >= 3, f"{where}: no preStop delay before the drain"
        assert pod["terminationGracePeriodSeconds"] > drain_s + pre_stop_s, where
        # The drain outlasts the request timeout, so no request is cut short by it.
        assert drain_s > seconds_setting(container, "request_timeout_s"), where
        assert seconds_setting(container, "keep_alive_s") > 60, where  # ingress idle timeouts


def test_every_vae_variable_is_a_setting(rendered: dict[str, list[Doc]]) -> None:
    seen = set()
    for where, pod in pods(rendered):
        for container in containers(pod):
            for name in env_of(container):
                if name.startswith("VAE_"):
                    assert name in SETTINGS_VARIABLES, f"{where} {container['name']}: {name}"
                    seen.add(name)
            # The image's command pins the address; a variable would be overridden.
            assert not {"VAE_HOST", "VAE_PORT"} & set(env_of(container)), where
    assert {"VAE_MODEL_DIR", "VAE_API_KEYS", "VAE_ADMIN_KEYS", "VAE_TORCH_THREADS"} <= seen


def test_the_variables_values_are_valid_settings(
    rendered: dict[str, list[Doc]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for where, pod in serving_pods(rendered):
        for name in SETTINGS_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, variable in env_of(serving_container(pod)).items():
            if name.startswith("VAE_") and "value" in variable:
                value = variable["value"]
                monkeypatch.setenv(name, re.sub(r"\$\(\w+\)", "key", value))
        settings = Settings()
        assert settings.model_dir == Path("/models"), where
        assert len(settings.api_keys) == 2, where  # the client keys and the metrics key


def test_keys_come_from_the_secret(rendered: dict[str, list[Doc]]) -> None:
    for where, pod in serving_pods(rendered):
        env = env_of(serving_container(pod))
        parts = re.findall(r"\$\((\w+)\)", env["VAE_API_KEYS"]["value"])
        assert parts and all(
            env[p]["valueFrom"]["secretKeyRef"]["name"] == "vae-keys" for p in parts
        )
        # $(VAR) expands only variables defined before it.
        names = list(env)
        assert all(names.index(p) < names.index("VAE_API_KEYS") for p in parts), where
        # A missing optional key would leave "$(VAR)" in the value, a usable key: required.
        assert not any(env[p]["valueFrom"]["secretKeyRef"].get("optional") for p in parts)
        assert env["VAE_ADMIN_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == "vae-keys"


def test_torch_threads_match_the_cpu_limit(rendered: dict[str, list[Doc]]) -> None:
    for where, pod in serving_pods(rendered):
        container = serving_container(pod)
        threads = int(env_of(container)["VAE_TORCH_THREADS"]["value"])
        limit = cpus(container["resources"]["limits"]["cpu"])
        # 0 lets the service count the quota itself (server/cpus.py): limit less one.
        assert threads in (0, max(1, math.ceil(limit) - 1)), where
        assert container["resources"]["requests"]["cpu"] == container["resources"]["limits"]["cpu"]
        assert container["resources"]["limits"]["memory"], where


def test_pods_are_locked_down(rendered: dict[str, list[Doc]]) -> None:
    checked = 0
    for where, pod in pods(rendered):
        assert pod["automountServiceAccountToken"] is False, where
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == UID, where
        assert context["seccompProfile"]["type"] == "RuntimeDefault", where
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod), where
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in containers(pod):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert security["runAsNonRoot"] is True and security["runAsUser"] == UID, where
            assert security["seccompProfile"]["type"] == "RuntimeDefault", where
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp is not an emptyDir"
            assert "limits" in container["resources"], where
            checked += 1
    assert checked >= 9
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"--uid {UID}" in dockerfile and "HOME=/tmp" in dockerfile


def test_serving_pods_read_the_model_repository(rendered: dict[str, list[Doc]]) -> None:
    for where, pod in serving_pods(rendered):
        container = serving_container(pod)
        model_dir = env_of(container)["VAE_MODEL_DIR"]["value"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == model_dir]
        assert mount.get("readOnly") is True, where
        volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
        assert volume["persistentVolumeClaim"]["claimName"] == "vae-models", where
        (seed,) = pod["initContainers"]
        assert env_of(seed)["VAE_MODEL_DIR"]["value"] == model_dir, where
        seed_mount = {m["mountPath"]: m for m in seed["volumeMounts"]}[model_dir]
        assert not seed_mount.get("readOnly") and seed_mount["name"] == mount["name"], where
    claim = one(rendered["cpu"], "PersistentVolumeClaim", "vae-models")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def seed_script(rendered: dict[str, list[Doc]]) -> str:
    (seed,) = one(rendered["cpu"], "Deployment")["spec"]["template"]["spec"]["initContainers"]
    assert seed["command"][:2] == ["python", "-c"]
    return str(seed["command"][2])


def test_the_seed_script_knows_the_repository_naming(rendered: dict[str, list[Doc]]) -> None:
    script = seed_script(rendered)
    pattern = re.search(r're\.fullmatch\(r"(.+?)", p\.name\)', script)
    assert pattern, script
    assert pattern.group(1) == NAME.pattern + re.escape(SUFFIX)
    kserve = predictor_pod_spec(one(rendered["kserve"], "InferenceService"))
    assert kserve["initContainers"][0]["command"][2] == script


def test_the_seed_script_fills_an_empty_repository_once(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    script = seed_script(rendered)
    env = {**os.environ, "VAE_MODEL_DIR": str(tmp_path)}

    def run() -> str:
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "seeded with fashion-mnist.safetensors" in run()
    assert [p.name for p in tmp_path.iterdir()] == ["fashion-mnist.safetensors"]
    before = (tmp_path / "fashion-mnist.safetensors").stat()
    assert "has models" in run()
    after = (tmp_path / "fashion-mnist.safetensors").stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    # A repository with other models is left alone (the bundled one is not added).
    other = tmp_path / "other"
    other.mkdir()
    (other / "shoes.safetensors").write_bytes(b"")
    (other / ".hidden.tmp").write_bytes(b"")
    env["VAE_MODEL_DIR"] = str(other)
    assert "has models" in run()
    assert sorted(p.name for p in other.iterdir()) == [".hidden.tmp", "shoes.safetensors"]


def test_gpu_overlay_asks_for_a_gpu(rendered: dict[str, list[Doc]]) -> None:
    gpu = one(rendered["gpu"], "Deployment")["spec"]["template"]["spec"]
    container = serving_container(gpu)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env_of(container)["VAE_DEVICE"]["value"] == "cuda"
    assert container["image"].endswith(":cuda")
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu[
        "tolerations"
    ]
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert len([e for e in container["env"] if e["name"] == "VAE_DEVICE"]) == 1
    cpu = one(rendered["cpu"], "Deployment")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in serving_container(cpu)["resources"]["limits"]
    assert env_of(serving_container(cpu))["VAE_DEVICE"]["value"] == "cpu"
    assert not serving_container(cpu)["image"].endswith((":latest", ":cuda"))
    gpu_hpa, cpu_hpa = (one(rendered[o], "HorizontalPodAutoscaler") for o in ("gpu", "cpu"))
    assert gpu_hpa["spec"]["maxReplicas"] < cpu_hpa["spec"]["maxReplicas"]


def spread_of(deployment: Doc) -> list[Doc]:
    return list(deployment["spec"]["template"]["spec"]["topologySpreadConstraints"])


def test_selectors_find_the_api_pods(rendered: dict[str, list[Doc]]) -> None:
    for name in ("cpu", "gpu"):
        docs = rendered[name]
        deployment = one(docs, "Deployment", "vae-service")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
        selectors = [
            deployment["spec"]["selector"]["matchLabels"],
            one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
            one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
            *(c["labelSelector"]["matchLabels"] for c in spread_of(deployment)),
        ]
        for selector in selectors:
            assert selector.items() <= labels.items(), selector
        hpa = one(docs, "HorizontalPodAutoscaler")
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert hpa["spec"]["minReplicas"] >= 2  # with the PDB, a drain never leaves none
        assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
        keys = {c["topologyKey"] for c in spread_of(deployment)}
        assert "kubernetes.io/hostname" in keys
        policy = one(docs, "NetworkPolicy")
        ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        container = serving_container(deployment["spec"]["template"]["spec"])
        assert ports == {p["name"] for p in container["ports"]}
        assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]


def test_queue_depth_scaling_uses_the_metric_the_service_exports(
    rendered: dict[str, list[Doc]],
) -> None:
    hpa = one(rendered["cpu+components"], "HorizontalPodAutoscaler")
    kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    metric = kinds["Pods"]["pods"]["metric"]["name"]
    metrics_source = (ROOT / "src" / "vae_service" / "server" / "metrics.py").read_text()
    assert f'"{metric}"' in metrics_source
    values = yaml.safe_load(
        (K8S / "components" / "queue-depth-hpa" / "prometheus-adapter-values.yaml").read_text()
    )
    (rule,) = values["rules"]["custom"]
    assert rule["name"]["as"] == metric and metric in rule["seriesQuery"]


def test_kserve_predictor_matches_the_deployment(rendered: dict[str, list[Doc]]) -> None:
    isvc = one(rendered["kserve"], "InferenceService")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    kserve = predictor_pod_spec(isvc)
    deployment = one(rendered["cpu"], "Deployment")["spec"]["template"]["spec"]
    container, reference = serving_container(kserve), serving_container(deployment)
    assert container["name"] == "kserve-container"
    assert listen_port(container) == 8080 and container["ports"][0]["containerPort"] == 8080
    for field in ("securityContext", "resources", "lifecycle", "image", "volumeMounts"):
        assert container[field] == reference[field], field
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        ours = {k: v for k, v in container[probe].items() if k != "httpGet"}
        theirs = {k: v for k, v in reference[probe].items() if k != "httpGet"}
        assert ours == theirs, probe
        assert container[probe]["httpGet"]["path"] == reference[probe]["httpGet"]["path"]
    assert container["env"] == reference["env"]
    pod_fields = (
        "securityContext",
        "terminationGracePeriodSeconds",
        "volumes",
        "serviceAccountName",
    )
    for field in pod_fields:
        assert kserve[field] == deployment[field], field
    policy = one(rendered["kserve"], "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": isvc["metadata"]["name"]
    }
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == {8080}
    # The copies of the base's namespace, service account and claim stay equal to it.
    for name in ("namespace.yaml", "serviceaccount.yaml", "pvc.yaml"):
        base = yaml.safe_load((K8S / "base" / name).read_text())
        assert yaml.safe_load((KSERVE / name).read_text()) == base, name


def test_the_training_job_is_consistent(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["jobs"]
    job = one(docs, "Job", "vae-train")
    spec = job["spec"]
    pod = spec["template"]["spec"]
    container = serving_container(pod)
    env = {name: e.get("value") for name, e in env_of(container).items()}
    nodes = int(env["NNODES"])
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == nodes
    assert container["resources"]["limits"]["nvidia.com/gpu"] == int(env["NPROC_PER_NODE"])
    service = one(docs, "Service", "vae-train")
    assert (
        service["spec"]["clusterIP"] == "None" and pod["subdomain"] == service["metadata"]["name"]
    )
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert env["MASTER_ADDR"] == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert service["spec"]["ports"][0]["port"] == int(env["MASTER_PORT"])
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims["models"] == "vae-models"
    one(rendered["cpu"], "PersistentVolumeClaim", claims["models"])
    one(docs, "PersistentVolumeClaim", claims["datasets"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[env["VAE_MODEL_DIR"]]["name"] == "models"
    assert mounts["/usr/share/datasets"]["readOnly"] is True
    script = container["command"][2]
    assert "vae_service.training.train" in script and "--resume" in script
    assert '"$VAE_MODEL_DIR/.train/' in script.replace("work=", "")  # a hidden work folder
    # The training image (the train extra); the serving images (:cuda, 0.1.0) lack it.
    assert container["image"].endswith(":cuda-train")

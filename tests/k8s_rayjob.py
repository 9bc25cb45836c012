"""KubeRay's RayJob (ray.io/v1), for tests/test_k8s.py: a minimal schema of the fields
deploy/k8s/ray/rayjob-encode.yaml uses, from the CRD (unknown fields refused, so a typo
fails), and the pods inside it, which the core Pod schema and the pod checks then see."""

from __future__ import annotations

from typing import Any

Doc = dict[str, Any]
STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
POD_TEMPLATE = {
    # metadata and spec: the spec is checked against the core PodSpec schema.
    "type": "object",
    "required": ["spec"],
    "additionalProperties": False,
    "properties": {
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"labels": STRINGS, "annotations": STRINGS},
        },
        "spec": {"type": "object"},
    },
}
GROUP = {
    "headGroupSpec": {
        "type": "object",
        "required": ["template"],
        "additionalProperties": False,
        "properties": {"rayStartParams": STRINGS, "template": POD_TEMPLATE},
    },
    "workerGroupSpecs": {
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "object",
            "required": ["groupName", "template"],
            "additionalProperties": False,
            "properties": {
                "groupName": {"type": "string"},
                "replicas": {"type": "integer", "minimum": 0},
                "minReplicas": {"type": "integer", "minimum": 0},
                "maxReplicas": {"type": "integer", "minimum": 1},
                "rayStartParams": STRINGS,
                "template": POD_TEMPLATE,
            },
        },
    },
}
RAY_JOB = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["entrypoint", "rayClusterSpec"],
            "additionalProperties": False,
            "properties": {
                "entrypoint": {"type": "string"},
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
                "submitterPodTemplate": POD_TEMPLATE,
                "rayClusterSpec": {
                    "type": "object",
                    "required": ["headGroupSpec"],
                    "additionalProperties": False,
                    "properties": {"rayVersion": {"type": "string"}, **GROUP},
                },
            },
        },
    },
}


def rayjob_pods(job: Doc) -> list[tuple[str, Doc]]:
    """(which pod, its PodSpec): the submitter, the head, each worker group."""
    spec, cluster = job["spec"], job["spec"]["rayClusterSpec"]
    found = [("head", cluster["headGroupSpec"]["template"]["spec"])]
    found += [(g["groupName"], g["template"]["spec"]) for g in cluster.get("workerGroupSpecs", [])]
    if "submitterPodTemplate" in spec:
        found.append(("submitter", spec["submitterPodTemplate"]["spec"]))
    return found

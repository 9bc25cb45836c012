"""The KubeRay RayJob that runs vae-encode-dataset --ray (deploy/k8s/ray), checked without
a cluster beyond tests/test_k8s.py's schemas: its entrypoint is a valid command line of
the CLI, every pod mounts what it reads at the same path, the head alone writes the
shards, one GPU per actor, and its Ray is the one constraints.txt pins."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.k8s_rayjob import RAY_JOB, rayjob_pods
from tests.test_k8s import K8S, ROOT, one, render
from vae_service.training.encode_dataset import build_parser

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    return render(K8S / "ray")


def mounts(pod: Doc) -> dict[str, Doc]:
    (container,) = pod["containers"]
    return {m["mountPath"]: m for m in container["volumeMounts"]}


def claim_at(pod: Doc, path: Path) -> tuple[str, bool]:
    """The PVC and read-only flag of the mount that holds ``path``."""
    found = [m for where, m in mounts(pod).items() if path.is_relative_to(where)]
    (mount,) = found
    volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
    return volume["persistentVolumeClaim"]["claimName"], bool(mount.get("readOnly"))


def test_the_entrypoint_is_a_valid_ray_run_of_the_cli(docs: list[Doc]) -> None:
    job = one(docs, "RayJob", "vae-encode")
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[0] == "vae-encode-dataset"
    args = build_parser().parse_args(command[1:])
    assert args.ray == ""  # the job's own cluster: RAY_ADDRESS, set on the head
    pods = dict(rayjob_pods(job))
    assert claim_at(pods["head"], args.dst) == ("vae-latents", False)
    for name in ("head", "gpu"):  # the driver lists the input; the actors read it
        assert claim_at(pods[name], args.src) == ("vae-datasets", True), name
        assert claim_at(pods[name], args.model) == ("vae-models", True), name
    assert all(not str(args.dst).startswith(p) for p in mounts(pods["gpu"]))
    one(docs, "PersistentVolumeClaim", "vae-latents")
    one(render(K8S / "jobs"), "PersistentVolumeClaim", "vae-datasets")


def test_one_gpu_per_actor_and_no_actor_on_the_head(docs: list[Doc]) -> None:
    job = one(docs, "RayJob", "vae-encode")
    args = build_parser().parse_args(shlex.split(job["spec"]["entrypoint"])[1:])
    cluster = job["spec"]["rayClusterSpec"]
    (group,) = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"]
    assert args.ray_concurrency == group["replicas"]
    (worker,) = group["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_the_clusters_ray_is_the_pinned_one(docs: list[Doc]) -> None:
    job = one(docs, "RayJob", "vae-encode")
    pinned = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert pinned and job["spec"]["rayClusterSpec"]["rayVersion"] == pinned[1]
    images = {c["image"] for _, pod in rayjob_pods(job) for c in pod["containers"]}
    assert images == {"vae-service:cuda-ray"}  # the image with the ray extra


def test_the_network_policy_selects_the_clusters_pods(docs: list[Doc]) -> None:
    policy = one(docs, "NetworkPolicy", "vae-encode")
    wanted = policy["spec"]["podSelector"]["matchLabels"].items()
    for name, pod_template in template_labels(one(docs, "RayJob", "vae-encode")):
        assert wanted <= pod_template.items(), name


def template_labels(job: Doc) -> list[tuple[str, dict[str, str]]]:
    cluster = job["spec"]["rayClusterSpec"]
    groups = [("head", cluster["headGroupSpec"])] + [
        (g["groupName"], g) for g in cluster["workerGroupSpecs"]
    ]
    return [(name, g["template"]["metadata"]["labels"]) for name, g in groups]


def test_the_rayjob_schema_refuses_typos(docs: list[Doc]) -> None:
    job = one(docs, "RayJob", "vae-encode")
    jsonschema.validate(job, RAY_JOB)
    for path, typo in ((("spec",), "entrypiont"), (("spec", "rayClusterSpec"), "rayVerison")):
        broken = copy.deepcopy(job)
        target = broken
        for key in path:
            target = target[key]
        target[typo] = "x"
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, RAY_JOB)

"""The training Job's own script (deploy/k8s/jobs/train.yaml), run here as its two pods
would run it: two shells with JOB_COMPLETION_INDEX 0 and 1, one torchrun each on the CPU,
meeting at a local master instead of vae-train-0.vae-train. It checks the torchrun flags,
the rendezvous of the two "nodes", DDP itself (the two ranks of vae-train end with
bit-identical weights: the suite's one DDP run), and the publishing step: the weights land
in the model repository under the model's name by one rename, and nothing else lands there."""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vae_service.model.weights import load_weights
from vae_service.server.model_entries import NAME, SUFFIX

JOB = Path(__file__).resolve().parents[1] / "deploy" / "k8s" / "jobs" / "train.yaml"
DATA = Path("/usr/share/datasets/fashion-mnist")
TINY = (
    "--limit-train 256 --limit-test 64 --latent-dim 4 --widths 4,8 --hidden-dim 16 "
    "--batch-size 64 --epochs 1 --prior-components 2 --device cpu"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason=f"Fashion-MNIST not installed at {DATA}")
def test_the_job_script_trains_on_two_nodes_and_publishes_the_weights(tmp_path: Path) -> None:
    job = next(d for d in yaml.safe_load_all(JOB.read_text()) if d and d["kind"] == "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["NNODES"] == "2" and env["NPROC_PER_NODE"] == "1"
    repository = tmp_path / "models"
    repository.mkdir()
    bin_dir = str(Path(sys.executable).parent)  # torchrun and python of this environment
    assert shutil.which("torchrun", path=bin_dir), "torchrun is not beside the interpreter"
    env |= {
        "VAE_MODEL_DIR": str(repository),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "MODEL_NAME": "tiny",
        "TRAIN_ARGS": TINY,
        "OMP_NUM_THREADS": "1",
        "PATH": bin_dir + os.pathsep + os.environ["PATH"],
    }
    pods = [
        subprocess.Popen(
            container["command"],
            env={**os.environ, **env, "JOB_COMPLETION_INDEX": str(index)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in range(2)
    ]
    logs = [pod.communicate(timeout=300)[0] for pod in pods]
    assert [pod.returncode for pod in pods] == [0, 0], "\n---\n".join(logs)[-4000:]
    assert f"published {repository}/tiny.safetensors" in logs[0]
    assert "published" not in logs[1]
    # The repository holds the weights and the hidden work folder, nothing the service
    # would take for a model (the checkpoint and the report stay in .train/tiny/).
    models = [p.name for p in repository.iterdir() if NAME.fullmatch(p.stem) and p.suffix == SUFFIX]
    assert models == ["tiny.safetensors"]
    assert sorted(p.name for p in repository.iterdir()) == [".train", "tiny.safetensors"]
    assert (repository / ".train" / "tiny" / "tiny.ckpt.safetensors").is_file()
    training = load_weights(repository / "tiny.safetensors").metadata["training"]
    assert training["world_size"] == 2 and training["replicas_identical"] is True
    assert math.isfinite(training["final_test"]["neg_elbo"])

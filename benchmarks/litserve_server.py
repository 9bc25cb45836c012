"""The same weights and wire format served by LitServe, with its dynamic batching on
(same batch size and delay as ours). LitServe batches requests, not images, so each
API stacks its requests' rows itself and splits the answer back by their counts.

    python -m benchmarks.litserve_server --weights W.safetensors --port 8001
"""

# No `from __future__ import annotations`: LitServe reads decode_request's annotation
# at run time to route the JSON body, and a string annotation turns it into a query.
from typing import Any

import litserve as ls
import torch
from torch import Tensor

from benchmarks import peers
from vae_service.model import VAE


class RowsAPI(ls.LitAPI):
    """Requests carry several rows; a batch concatenates them and splits the outputs."""

    def __init__(self, weights: str, threads: int, path: str, **batching: Any) -> None:
        super().__init__(api_path=path, **batching)
        self.weights, self.threads = weights, threads
        self.sizes: list[int] = []

    def setup(self, device: str) -> None:
        self.model: VAE = peers.load_model(self.weights, self.threads)

    def batch(self, inputs: list[Tensor]) -> Tensor:
        self.sizes = [len(rows) for rows in inputs]
        return torch.cat(inputs)

    def unbatch(self, output: Any) -> list[Any]:
        parts = [t.split(self.sizes) for t in output] if isinstance(output, tuple) else None
        if parts is None:
            return list(output.split(self.sizes))
        return list(zip(*parts, strict=True))


class EncodeAPI(RowsAPI):
    def decode_request(self, request: dict[str, Any], **kwargs: Any) -> Tensor:
        return peers.images_from_json(request, self.model)

    def predict(self, x: Tensor, **kwargs: Any) -> tuple[Tensor, Tensor]:
        with torch.inference_mode():
            return self.model.encode(x)

    def encode_response(self, output: tuple[Tensor, Tensor], **kwargs: Any) -> dict[str, Any]:
        return peers.posterior_json(*output)


class DecodeAPI(RowsAPI):
    def decode_request(self, request: dict[str, Any], **kwargs: Any) -> Tensor:
        return peers.latents_from_json(request)

    def predict(self, z: Tensor, **kwargs: Any) -> Tensor:
        with torch.inference_mode():
            return self.model.decode(z)

    def encode_response(self, output: Tensor, **kwargs: Any) -> dict[str, Any]:
        return peers.images_json(output)


class SampleAPI(DecodeAPI):
    """POST {"n": 256, "seed": 1}: LitServe endpoints take a body, not a query."""

    def decode_request(self, request: dict[str, Any], **kwargs: Any) -> Tensor:
        return peers.prior_draws(int(request["n"]), int(request.get("seed", 0)), self.model)


def main() -> None:
    args = peers.parse_args("LitServe VAE server (benchmark peer)")
    batching = {
        "max_batch_size": args.max_batch_size,
        "batch_timeout": args.max_batch_delay_ms / 1e3,
    }
    apis = [
        api(args.weights, args.threads, path, **batching)
        for api, path in ((EncodeAPI, "/encode"), (DecodeAPI, "/decode"), (SampleAPI, "/sample"))
    ]
    server = ls.LitServer(apis, accelerator="cpu", devices=1, workers_per_device=1)
    server.run(port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()

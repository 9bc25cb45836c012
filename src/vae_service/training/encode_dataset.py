"""``vae-encode-dataset SRC DST --model WEIGHTS_OR_FOLDER``: every image of a dataset
through a VAE's encoder, once, into Parquet shards (docs/bulk.md).

SRC is a folder of images (read recursively; ids are the relative paths) or Parquet
files with an image column (bytes) and an id column. The model is one this service can
serve: a vae-service ``.safetensors`` file, or a diffusers AutoencoderKL or
AutoencoderTiny folder. Images are decoded exactly as ``/encode`` decodes them.

DST gets ``part-NNNNN.parquet`` shards of ``--shard-size`` images each (the last one
fewer), one row per image: ``id``, the latent columns (``mean`` and ``logvar`` for our
VAEs; ``latent`` and ``latent_shape`` for diffusers'), ``model`` and ``sha256``. Images
that cannot be read or decoded are listed in ``DST/_errors.jsonl`` with the reason, and
the run goes on. A rerun skips the shards already written. The same input and model
give the same bytes.

Locally (the default) it runs in this process, in batches of ``--batch-size``, on the
GPU when there is one, and the next batch's images are decoded on a second thread
meanwhile: every usable CPU works, torch on all but one (as vae-serve, whose event loop
decodes: torch's threads that wait on each other's time slices ran 5-30 times slower
on 2 busy cores, server/runtime.py's torch_threads). ``--ray [ADDRESS]`` runs the same
chunks on Ray Data (the ``ray`` extra): a pool of ``--ray-concurrency`` actors, each
loading the model once.

Exit status: 0 when every shard is written (even with images in the errors file); 2 for
a user's mistake, in one line on stderr: an input with no images, a model that cannot
be loaded, a DST that holds another run's output, ray or pyarrow not installed.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vae_service.server.runtime import torch_threads
from vae_service.training.bulk_chunks import Chunk, Plan, encode_prepared, prepare_chunk, schema
from vae_service.training.bulk_models import DEFAULT_MAX_PIXELS, BulkModel, ModelSpec
from vae_service.training.bulk_shards import ShardOutput
from vae_service.training.bulk_sources import ImageSource, open_source
from vae_service.training.cli import one_line_errors
from vae_service.training.data import DataError

PROG = "vae-encode-dataset"
LOOKAHEAD = 2  # chunks decoded ahead of the model: enough to hide decoding, little memory


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("src", type=Path, help="a folder of images, or Parquet file(s)")
    p.add_argument("dst", type=Path, help="the output folder")
    p.add_argument("--model", type=Path, required=True, help="weights file or diffusers folder")
    p.add_argument("--shard-size", type=int, default=1000, help="images per Parquet shard")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--id-column", default="id", help="Parquet input: the ids' column")
    p.add_argument("--image-column", default="image", help="Parquet input: the images' column")
    p.add_argument("--scale", action="store_true", help="diffusers: apply the model's scaling")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: usable CPUs - 1)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="per image")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--ray", nargs="?", const="", metavar="ADDRESS", help="run on Ray (a cluster's address)"
    )
    p.add_argument("--ray-concurrency", type=int, help="Ray actors (default: GPUs, else CPUs)")
    return p


def check_args(args: argparse.Namespace) -> None:
    sizes = (args.shard_size, args.batch_size, args.max_pixels, args.ray_concurrency or 1)
    if min(sizes) < 1 or args.threads < 0:
        raise ValueError(
            "--shard-size, --batch-size, --max-pixels and --ray-concurrency must be >= 1"
        )
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise DataError("pyarrow is not installed: pip install 'vae-service[train]'") from None


def run_description(model: BulkModel, source: ImageSource, args: argparse.Namespace) -> dict:
    listing = hashlib.sha256("\n".join(source.ids).encode()).hexdigest()
    return {
        "model": model.name,
        "sha256": model.sha256,
        "family": model.family,
        "scale": args.scale,
        "images": len(source.ids),
        "ids_sha256": listing,
        "shard_size": args.shard_size,
        "batch_size": args.batch_size,
    }


def run_local(model: BulkModel, source: ImageSource, chunks: list[Chunk]) -> Iterator[Any]:
    """(chunk, table) in order; the next chunks' images decode on a thread meanwhile."""
    with ThreadPoolExecutor(1, thread_name_prefix="decode") as pool:
        ahead: deque[Future[Any]] = deque()
        todo = iter(chunks)
        for chunk in itertools.islice(todo, LOOKAHEAD):
            ahead.append(pool.submit(prepare_chunk, model, source, chunk))
        while ahead:
            prepared = ahead.popleft().result()
            for chunk in itertools.islice(todo, 1):
                ahead.append(pool.submit(prepare_chunk, model, source, chunk))
            yield prepared.chunk, encode_prepared(model, prepared)


def write_all(output: ShardOutput, stream: Iterator[Any], model: BulkModel, bar: tqdm) -> int:
    """Every shard of the stream, in order; the number written."""
    written = 0
    for shard, chunks in itertools.groupby(stream, key=lambda pair: pair[0].shard):
        output.write(shard, _counted(chunks, bar), schema(model))
        written += 1
    return written


def _counted(chunks: Iterator[Any], bar: tqdm) -> Iterator[Any]:
    for chunk, table in chunks:
        bar.update(chunk.stop - chunk.start)
        yield chunk, table


def _stream(
    args: argparse.Namespace,
    spec: ModelSpec,
    model: BulkModel,
    source: ImageSource,
    pending: list[Chunk],
) -> Iterator[Any]:
    if args.ray is None:
        return run_local(model, source, pending)
    from vae_service.training.bulk_ray import run_ray  # the ray extra's, only when asked

    return run_ray(spec, source, pending, args.ray, args.ray_concurrency)


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    source = open_source(args.src, args.id_column, args.image_column)
    if not source.ids:
        raise DataError(f"{args.src} holds no images (suffixes: .png, .jpg, ...); nothing to do")
    torch.set_num_threads(torch_threads(args.threads))
    spec = ModelSpec(args.model, args.device, args.scale, args.max_pixels)
    model = spec.load()
    plan = Plan(len(source.ids), args.shard_size, args.batch_size)
    output = ShardOutput(args.dst, run_description(model, source, args))
    pending = [c for s in range(plan.shards) if not output.done(s) for c in plan.chunks(s)]
    bar = tqdm(total=sum(c.stop - c.start for c in pending), unit="img", disable=args.no_progress)
    with bar:
        written = write_all(output, _stream(args, spec, model, source, pending), model, bar)
    errors = output.finish(plan.shards)
    print(
        f"{PROG}: {plan.count} images, {plan.shards} shards ({written} written, "
        f"{plan.shards - written} already there), {errors} errors: {args.dst}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

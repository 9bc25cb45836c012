"""``vae-encode-dataset --ray [ADDRESS]``: the same chunks on Ray Data.

The dataset is the plan's chunk list (``ray.data.from_items``: chunk number, start, stop
of the sorted listing), one Ray row per chunk. ``map_batches`` runs ChunkEncoder, a
callable class: each actor loads the model once, then reads, decodes and encodes one
chunk per call (``batch_size=1``: one chunk is one forward pass of ``--batch-size``
images, as locally). ``num_gpus=1`` per actor when the cluster has GPUs, and a fixed
pool of ``--ray-concurrency`` actors (``compute=ActorPoolStrategy(size=N)``, which
replaced ``concurrency=N`` in Ray 2.51). Order is preserved, and this process writes
the shards from the mapped tables, so the rows and bytes equal a local run's.

Why not ``Dataset.write_parquet``: it names files by the dataset's id and block number
and cuts them by block, so a shard could not be a fixed slice of the input; a rerun
could not tell which rows a file holds (resume); and it writes in place, so a run
killed mid-file would leave a partial file looking complete. Shard files written here are
renamed into place whole.

The model and the input must be readable at the same paths on every node (a shared
volume: deploy/k8s/jobs/rayjob-encode.yaml).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from vae_service.training.bulk_chunks import CHUNK_COLUMN, Chunk, encode_chunk
from vae_service.training.bulk_models import ModelSpec
from vae_service.training.bulk_sources import ImageSource
from vae_service.training.data import DataError

INSTALL_HINT = "pip install 'vae-service[ray]'"
MAX_BLOCKS = 1024


class ChunkEncoder:
    """A Ray actor: the model, loaded once; one chunk per call."""

    def __init__(self, spec: ModelSpec, source: ImageSource) -> None:
        self.model = spec.load()
        self.source = source

    def __call__(self, batch: dict[str, Any]) -> Any:
        import pyarrow as pa

        tables = [
            encode_chunk(self.model, self.source, Chunk(*(int(batch[k][i]) for k in FIELDS)))
            for i in range(len(batch["index"]))
        ]
        return pa.concat_tables(tables)


FIELDS = ("index", "shard", "start", "stop")


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise DataError(f"ray is not installed: {INSTALL_HINT}") from None
    return ray


def _resources(ray: Any, concurrency: int | None) -> tuple[int, int]:
    """(actors, GPUs each): one GPU per actor where the cluster has GPUs."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    return concurrency or gpus or max(1, int(resources.get("CPU", 1))), 1 if gpus else 0


def run_ray(
    spec: ModelSpec,
    source: ImageSource,
    chunks: list[Chunk],
    address: str,
    concurrency: int | None,
) -> Iterator[tuple[Chunk, Any]]:
    """(chunk, table) in the chunks' order, computed by a pool of Ray actors."""
    ray = _ray()
    if not chunks:  # every shard is there already: no cluster to start
        return
    started = not ray.is_initialized()
    if started:
        ray.init(address=address or None, log_to_driver=False, logging_level="warning")
    try:
        yield from _mapped(ray, spec, source, chunks, concurrency)
    finally:
        if started:
            ray.shutdown()


def _mapped(
    ray: Any, spec: ModelSpec, source: ImageSource, chunks: list[Chunk], concurrency: int | None
) -> Iterator[tuple[Chunk, Any]]:
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # ours counts images
    actors, gpus = _resources(ray, concurrency)
    items = [asdict(c) for c in chunks]
    # A block per chunk, up to a bound, so that every actor gets work from the start.
    blocks = min(len(items), MAX_BLOCKS)
    dataset = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        ChunkEncoder,
        fn_constructor_kwargs={"spec": spec, "source": source},
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus,
    )
    by_index = {c.index: c for c in chunks}
    blocks = dataset.iter_batches(batch_size=None, batch_format="pyarrow")
    for number, table in _per_chunk(blocks):
        yield by_index[number], table


def _per_chunk(blocks: Iterator[Any]) -> Iterator[tuple[int, Any]]:
    """Blocks, as Ray cuts them, -> one table per chunk: a block may hold several chunks,
    and a chunk could span two blocks."""
    pieces: list[Any] = []
    for block in blocks:
        numbers = block.column(CHUNK_COLUMN).to_pylist()
        start = 0
        for end in range(1, len(numbers) + 1):
            if end == len(numbers) or numbers[end] != numbers[start]:
                if pieces and pieces[0].column(CHUNK_COLUMN)[0].as_py() != numbers[start]:
                    yield _whole(pieces)
                    pieces = []
                pieces.append(block.slice(start, end - start))
                start = end
    if pieces:
        yield _whole(pieces)


def _whole(pieces: list[Any]) -> tuple[int, Any]:
    import pyarrow as pa

    table = pa.concat_tables(pieces).combine_chunks()
    return table.column(CHUNK_COLUMN)[0].as_py(), table

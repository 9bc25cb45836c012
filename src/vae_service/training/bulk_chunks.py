"""The unit of work of ``vae-encode-dataset``, the same locally and on Ray: a chunk.

Shard i holds images ``i * shard_size`` up to ``(i + 1) * shard_size`` of the sorted
listing; a shard is cut into chunks of ``batch_size`` images, each one forward pass.
Both runners pass the very same chunks through the very same functions (prepare_chunk,
then encode_prepared), so the model sees the same batches and the rows come out
bit-identical: a CPU kernel may round differently at another batch size.

A chunk's table has one row per image, in order: the images that encoded, then the
ones that did not (their latent columns null, ``error`` saying why). ``chunk`` numbers
the chunk, so that the rows can be put back in order wherever they were computed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from vae_service.server.errors import ServiceError
from vae_service.training.bulk_models import BulkModel
from vae_service.training.bulk_sources import ImageSource

CHUNK_COLUMN, ERROR_COLUMN = "chunk", "error"
INDEX_PREFIX = re.compile(r"^images\[\d+\] ")


@dataclass(frozen=True)
class Chunk:
    index: int
    shard: int
    start: int
    stop: int


@dataclass(frozen=True)
class Plan:
    count: int
    shard_size: int
    batch_size: int

    @property
    def shards(self) -> int:
        return math.ceil(self.count / self.shard_size)

    def chunks(self, shard: int) -> list[Chunk]:
        """The shard's chunks, numbered across the whole plan."""
        start = shard * self.shard_size
        stop = min(self.count, start + self.shard_size)
        first = shard * math.ceil(self.shard_size / self.batch_size)
        return [
            Chunk(first + k, shard, s, min(stop, s + self.batch_size))
            for k, s in enumerate(range(start, stop, self.batch_size))
        ]


@dataclass
class Prepared:
    chunk: Chunk
    ids: list[str]
    images: list[np.ndarray]
    failed: list[tuple[str, str]]  # (id, reason)


def prepare_chunk(model: BulkModel, source: ImageSource, chunk: Chunk) -> Prepared:
    """Read and decode the chunk's images; those that fail are set aside with the reason."""
    prepared = Prepared(chunk, [], [], [])
    names, blobs = source.ids[chunk.start : chunk.stop], source.read(chunk.start, chunk.stop)
    for offset, (name, blob) in enumerate(zip(names, blobs, strict=True)):
        if isinstance(blob, str):
            prepared.failed.append((name, blob))
            continue
        try:
            image = model.prepare(blob, chunk.start + offset)
        except ServiceError as exc:  # BadImage, Unprocessable: what /encode answers 4xx
            # "images[N] is ...": the id says which, beside it.
            prepared.failed.append((name, INDEX_PREFIX.sub("", str(exc.detail))))
        else:
            prepared.images.append(image)
            prepared.ids.append(name)
    return prepared


def schema(model: BulkModel) -> Any:
    """The output rows' columns (without ``chunk`` and ``error``)."""
    import pyarrow as pa

    text = [pa.field(name, pa.string()) for name in ("model", "sha256")]
    info = f'{{"family": "{model.family}"}}'
    return pa.schema(
        [pa.field("id", pa.string()), *model.fields(), *text], metadata={"vae_service": info}
    )


def encode_prepared(model: BulkModel, prepared: Prepared) -> Any:
    """The chunk's table: encoded rows, then failed ones."""
    import pyarrow as pa

    out = schema(model).append(pa.field(ERROR_COLUMN, pa.string()))
    out = out.append(pa.field(CHUNK_COLUMN, pa.int64()))
    columns: dict[str, Any] = {}
    if prepared.images:
        columns = model.encode(prepared.images)
    n, failed = len(prepared.ids), len(prepared.failed)
    values: dict[str, list[Any]] = {
        "id": prepared.ids + [name for name, _ in prepared.failed],
        "model": [model.name] * (n + failed),
        "sha256": [model.sha256] * (n + failed),
        ERROR_COLUMN: [None] * n + [reason for _, reason in prepared.failed],
        CHUNK_COLUMN: [prepared.chunk.index] * (n + failed),
    }
    arrays = [_column(field, columns, values, n, failed) for field in out]
    return pa.Table.from_arrays(arrays, schema=out)


def _column(
    field: Any, latents: dict[str, Any], values: dict[str, list[Any]], n: int, failed: int
) -> Any:
    import pyarrow as pa

    if field.name in values:
        return pa.array(values[field.name], field.type)
    encoded = latents[field.name] if n else pa.array([], field.type)
    return pa.concat_arrays([encoded, pa.nulls(failed, field.type)])


def encode_chunk(model: BulkModel, source: ImageSource, chunk: Chunk) -> Any:
    return encode_prepared(model, prepare_chunk(model, source, chunk))

"""``vae-encode-dataset``'s output folder: Parquet shards, the errors, and the run's
description.

    DST/part-00000.parquet ...   shard i: images i * shard_size ... of the sorted input
    DST/_errors.jsonl            {"id": ..., "reason": ...} per image that failed, in order
    DST/_run.json                what made the shards: model, SHA-256, input, sizes

Names starting with ``_`` or ``.`` are skipped by pyarrow's, pandas', Ray's and DuckDB's
readers of a folder, so ``pandas.read_parquet(DST)`` reads the shards alone.

A shard is written to a hidden temporary file, then renamed: a shard that exists is
complete, and a rerun skips it (its errors were written, to ``_errors/``, before the
rename). ``_run.json`` must match on a rerun, so that a resumed run never mixes models,
inputs or batch sizes. The bytes are deterministic: pyarrow writes no timestamps, the
compression is pinned, and row groups are the chunks (one forward pass each).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vae_service.model.weights import write_atomic
from vae_service.training.bulk_chunks import CHUNK_COLUMN, ERROR_COLUMN, Chunk
from vae_service.training.data import DataError

RUN_FILE, ERRORS_FILE, ERRORS_DIR = "_run.json", "_errors.jsonl", "_errors"
COMPRESSION, COMPRESSION_LEVEL = "zstd", 3


def shard_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


class ShardOutput:
    """DST, checked against the run's description (or given it, on a first run)."""

    def __init__(self, dst: Path, run: dict[str, Any]) -> None:
        self.dst = dst
        dst.mkdir(parents=True, exist_ok=True)
        described = dst / RUN_FILE
        text = json.dumps(run, indent=2, sort_keys=True) + "\n"
        if described.exists() and described.read_text() != text:
            raise DataError(
                f"{dst} holds the output of another run ({described} differs: other "
                "input, model or sizes); give an empty folder, or the same arguments"
            )
        write_atomic(described, text.encode())

    def done(self, shard: int) -> bool:
        return (self.dst / shard_name(shard)).is_file()

    def write(self, shard: int, chunks: Iterable[tuple[Chunk, Any]], schema: Any) -> None:
        """The shard from its chunks' tables, in order; then renamed into place."""
        import pyarrow.parquet as pq

        final = self.dst / shard_name(shard)
        temporary = final.with_name(f".{final.name}.tmp")
        errors: list[dict[str, str]] = []
        with pq.ParquetWriter(
            temporary, schema, compression=COMPRESSION, compression_level=COMPRESSION_LEVEL
        ) as writer:
            for _, table in chunks:
                rows, failed = split_errors(table)
                if rows.num_rows:
                    writer.write_table(rows)
                errors += failed
        lines = "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors)
        write_atomic(self.dst / ERRORS_DIR / f"{final.stem}.jsonl", lines.encode())
        temporary.replace(final)

    def finish(self, shards: int) -> int:
        """Gather every shard's errors into _errors.jsonl; their number."""
        parts = [self.dst / ERRORS_DIR / f"{Path(shard_name(s)).stem}.jsonl" for s in range(shards)]
        text = "".join(p.read_text() for p in parts)
        write_atomic(self.dst / ERRORS_FILE, text.encode())
        return text.count("\n")


def split_errors(table: Any) -> tuple[Any, list[dict[str, str]]]:
    """A chunk's table -> the encoded rows (output columns only) and the failures."""
    import pyarrow.compute as pc

    failed = pc.is_valid(table.column(ERROR_COLUMN))
    rows = table.filter(pc.invert(failed)).drop_columns([ERROR_COLUMN, CHUNK_COLUMN])
    bad = table.filter(failed).select(["id", ERROR_COLUMN]).to_pylist()
    return rows, [{"id": b["id"], "reason": b[ERROR_COLUMN]} for b in bad]

"""Caption output: Parquet shards in `OUT`, each written whole under a temporary name and renamed.

Layout of `OUT`:

- `part-<run>-<seq>.parquet`: one row per annotation (`SCHEMA`); `<run>` is unique per run, so
  runs and engines never overwrite each other's shards;
- `.part-*.parquet.tmp`: a shard being written (a killed run leaves at most one per writer; the
  next run deletes them);
- `manifest.json`: the shards (file, rows), the schema, the model, its `config_hash` and the
  decoding settings; rewritten (atomically) after every shard.

Resume rule: the annotation ids already present in the complete shards are skipped (`done_keys`),
so a killed run loses only its unwritten rows and every annotation appears exactly once.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
SHARD_GLOB = "part-*.parquet"
TMP_GLOB = ".part-*.parquet.tmp"
COLUMNS = ("image_id", "annotation_id", "question", "caption", "prompt_tokens", "completion_tokens", "model",
           "config_hash", "decoding", "error")


def schema():
    """The row schema (pyarrow): ids and texts as strings, token counts int64; caption, token counts and
    error nullable (an error row has no caption, a good row no error)."""
    pa = require_pyarrow()
    return pa.schema([
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("annotation_id", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        pa.field("model", pa.string(), nullable=False),
        pa.field("config_hash", pa.string(), nullable=False),
        pa.field("decoding", pa.string(), nullable=False),
        pa.field("error", pa.string()),
    ])


def require_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ImportError('captioning writes Parquet with pyarrow: pip install "pixelrefer-fast[caption]"') from None
    return pyarrow


def clean_partial(out: Path) -> list[Path]:
    """Delete temporary shards a killed run left in `out`; returns them."""
    removed = sorted(out.glob(TMP_GLOB))
    for path in removed:
        path.unlink()
    return removed


def done_keys(out: Path) -> set[str]:
    """The annotation ids of every complete shard in `out`."""
    pa = require_pyarrow()
    keys: set[str] = set()
    for path in sorted(out.glob(SHARD_GLOB)):
        table = pa.parquet.read_table(path, columns=["annotation_id"])
        keys.update(table.column("annotation_id").to_pylist())
    return keys


def read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def check_compatible(out: Path, run_info: dict[str, Any]) -> None:
    """Refuse to resume into `out` when its rows came from another model config or decoding settings.

    Raises:
        ValueError: naming the field that differs and both values.
    """
    manifest = read_manifest(out)
    if manifest is None or not list(out.glob(SHARD_GLOB)):
        return
    for key in ("config_hash", "decoding"):
        if key in manifest and manifest[key] != run_info[key]:
            raise ValueError(f"--out {out} holds rows with {key}={manifest[key]!r} but this run has "
                             f"{run_info[key]!r}; use a new --out (resuming would mix outputs)")


def shard_rows(out: Path) -> dict[str, int]:
    """`{file name: rows}` of the complete shards in `out` (read from the Parquet footers)."""
    pa = require_pyarrow()
    return {path.name: pa.parquet.ParquetFile(path).metadata.num_rows for path in sorted(out.glob(SHARD_GLOB))}


def write_manifest(out: Path, run_info: dict[str, Any], shards: dict[str, int]) -> None:
    """Rewrite `manifest.json` for `shards` (`{file name: rows}`) through a temporary file + rename."""
    manifest = {**run_info, "shards": [{"file": name, "rows": rows} for name, rows in sorted(shards.items())],
                "rows": sum(shards.values()),
                "schema": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema()]}
    tmp = out / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)


class ShardWriter:
    """Buffers rows and writes them as shards of `shard_size` rows (temporary name, then rename).

    Args:
        out: the output folder (created).
        shard_size: rows per shard; `flush` writes a smaller last shard.
        run_info: `model`, `config_hash` and `decoding` of this run (the manifest's header).
    """

    def __init__(self, out: str | Path, shard_size: int, run_info: dict[str, Any]):
        if shard_size < 1:
            raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.run_info = run_info
        self.run = uuid.uuid4().hex[:12]
        self.rows: list[dict[str, Any]] = []
        self.shards = shard_rows(self.out)  # earlier runs' shards, then ours
        self.shards_written = 0

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        while len(self.rows) >= self.shard_size:
            self._write(self.rows[: self.shard_size])
            del self.rows[: self.shard_size]

    def flush(self) -> None:
        if self.rows:
            self._write(self.rows)
            self.rows = []
        write_manifest(self.out, self.run_info, self.shards)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        pa = require_pyarrow()
        table = pa.Table.from_pylist(rows, schema=schema())
        name = f"part-{self.run}-{self.shards_written:05d}.parquet"
        tmp = self.out / f".{name}.tmp"
        pa.parquet.write_table(table, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, self.out / name)
        self.shards[name] = len(rows)
        self.shards_written += 1
        write_manifest(self.out, self.run_info, self.shards)


def read_captions(out: str | Path):
    """All complete shards of `out` as one pyarrow Table (`manifest.json` beside them is skipped)."""
    pa = require_pyarrow()
    paths = sorted(Path(out).glob(SHARD_GLOB))
    if not paths:
        return schema().empty_table()
    return pa.concat_tables([pa.parquet.read_table(path, schema=schema()) for path in paths])

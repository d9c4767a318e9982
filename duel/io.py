"""Crash-safe files: atomic writes, checksummed checkpoints, append-only logs.

Every file a run leaves is either complete or absent: content is written to a
temporary file in the same folder, flushed to disk, then renamed over the target
(``os.replace`` is atomic on POSIX). Checkpoints carry a SHA-256 recorded in a
side file, so a truncated or corrupted checkpoint is detected instead of loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted: missing checksum, mismatch, bad file."""


@contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file that appears at ``path`` whole when the block ends.

    The content goes to a temporary file in the same folder, is flushed to disk
    and renamed over ``path``; an error in the block leaves ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers see the old or the new file."""
    with atomic_writer(path) as handle:
        handle.write(data)


def atomic_write_json(path: str | os.PathLike, record: Any) -> None:
    """Atomic JSON file, indented for people to read."""
    text = json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode())


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Saves ``state`` (tensors, numbers, strings, lists, dicts) with a checksum.

    The side file lists the digests a valid checkpoint may have. It is widened to
    old and new before the checkpoint is replaced and narrowed afterwards, so a
    kill at any point leaves a checkpoint whose digest is listed.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()

    side = _checksum_path(path)
    accepted = [digest]
    if path.exists() and side.exists():
        accepted += side.read_text().split()[:1]
    atomic_write_bytes(side, ("\n".join(accepted) + "\n").encode())
    atomic_write_bytes(path, data)
    atomic_write_bytes(side, (digest + "\n").encode())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Loads a checkpoint written by :func:`save_checkpoint`, after checking it.

    Only tensors and plain containers are unpickled (``weights_only=True``).

    Raises:
        CheckpointError: when the checksum is missing or does not match, or the
            file does not load.
    """
    path = Path(path)
    side = _checksum_path(path)
    if not side.exists():
        raise CheckpointError(
            f"checkpoint {path} has no checksum file {side.name}; it was not "
            "written by this package or its write was interrupted: delete it to "
            "start the run afresh"
        )
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest not in side.read_text().split():
        raise CheckpointError(
            f"checkpoint {path} is corrupted or truncated (SHA-256 {digest[:12]}... "
            f"not in {side.name}); delete it to start the run afresh"
        )
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # any unpickling failure means the same to us
        raise CheckpointError(f"checkpoint {path} does not load: {error}") from error


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a torn last line (a kill mid-write) is dropped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def truncate_jsonl(path: str | os.PathLike, last_step: int) -> None:
    """Drops records after ``last_step`` (those a resumed run will write again)."""
    path = Path(path)
    if path.exists():
        kept = [r for r in read_jsonl(path) if r.get("step", -1) <= last_step]
        write_jsonl(path, kept)


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Writes a whole JSON-lines file atomically."""
    text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in records)
    atomic_write_bytes(path, text.encode())


def append_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Appends records; a kill mid-append leaves at most one torn last line."""
    text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in records)
    if text:
        with open(path, "a") as handle:
            handle.write(text)
            handle.flush()

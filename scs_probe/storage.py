"""Whole-file writes that a reader never sees half done, with the permissions a plain open() would give."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, data: bytes | str | Callable) -> Path:
    """Write `data` (bytes, text, or a function of a binary file) to a temporary file in the same folder, then
    rename it over `path`. mkstemp creates 0600 files; they get 0666 minus the umask, as open() gives, so runs
    on shared storage stay readable to colleagues and other nodes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def temp_dir(parent, prefix: str) -> Path:
    """A new folder of a unique name in `parent` (for one process' work in progress), with the permissions mkdir
    gives rather than mkdtemp's 0700."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    os.chmod(path, 0o777 & ~_umask())
    return path


def csv_text(fields: Iterable[str], rows: Iterable[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_csv(path, rows: list[dict], fields: Iterable[str] | None = None, float_format: str | None = None) -> Path:
    """Rows as CSV, atomically; `fields` default to the first row's keys; floats formatted with `float_format`."""
    fields = list(fields) if fields is not None else list(rows[0]) if rows else []
    if float_format:
        rows = [{k: (format(v, float_format) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    return atomic_write(path, csv_text(fields, rows))


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_json(path, data: dict) -> Path:
    return atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())

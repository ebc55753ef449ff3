"""Checkpoint of measured frames: append-only, integrity-checked records, so a run can resume.

The file starts with a magic line; each record is

    b"TSR1" | payload length (8 bytes, little-endian) | sha256 of the payload (32 bytes) | payload

and a payload is a JSON header (scalars, array layout) followed by the raw array bytes. A record is
written with one ``write`` and flushed, so a process killed at any instant leaves at most one
partial record at the end; reading stops at the first record that is short or whose digest does
not match, and appending first cuts the file back to the last whole record. Arrays keep their
dtype and bytes exactly, and floats in the header are written with ``repr``, so a resumed run
sees the very numbers the interrupted one measured. No pickle: loading a checkpoint runs no code.

A record is keyed by the sha256 of the exposure's bytes and by the plan key, a hash of everything
that affects measuring a frame (apertures, objects, reference stars, gain, masters' pixels, the
tsphot version). Records of another plan are ignored, so changed settings never mix with old
measurements.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tsphot import __version__

log = logging.getLogger("tsphot")

CHECKPOINT_NAME = "checkpoint.tsck"
_MAGIC = b"TSPHOT-CHECKPOINT 1\n"
_REC = b"TSR1"
_HEAD = struct.Struct("<4sQ32s")  # record magic, payload length, sha256 of payload
_FSYNC_EVERY_S = 2.0  # kill -9 loses nothing written; fsync bounds what a power cut can lose


# ----------------------------------------------------------------------------- plan key


def _feed(h: Any, value: Any) -> None:
    """Feed a value into a hash in a canonical, type-tagged form."""
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        h.update(f"nd{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes() if arr.dtype != object else repr(arr.tolist()).encode())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        h.update(f"dc{type(value).__name__}".encode())
        for f in dataclasses.fields(value):
            h.update(f.name.encode())
            _feed(h, getattr(value, f.name))
    elif isinstance(value, list | tuple):
        h.update(f"seq{len(value)}".encode())
        for v in value:
            _feed(h, v)
    elif isinstance(value, dict):
        h.update(f"map{len(value)}".encode())
        for k in sorted(value, key=str):
            h.update(str(k).encode())
            _feed(h, value[k])
    else:
        h.update(f"{type(value).__name__}:{value!r}".encode())


_PLAN_IGNORE = ("ref_path", "masters_file", "masters_by_frame", "save_calibrated")


def _npz_digest(path: str) -> str:
    """Hash of the arrays in a .npz file (not of the zip bytes, which carry timestamps)."""
    h = hashlib.sha256()
    with np.load(path) as z:
        for name in sorted(z.files):
            h.update(name.encode())
            _feed(h, z[name])
    return h.hexdigest()


def plan_key(plan: Any, ignore: tuple[str, ...] = _PLAN_IGNORE) -> str:
    """Hash (hex) of everything in a plan that affects a frame's measurement, masters by content."""
    h = hashlib.sha256(f"tsphot {__version__}".encode())
    for f in dataclasses.fields(plan):
        if f.name in ignore:
            continue
        h.update(f.name.encode())
        _feed(h, getattr(plan, f.name))
    # the masters' pixels, not their paths: a moved output folder still resumes
    digests: dict[str, str] = {}
    masters = getattr(plan, "masters_file", None)
    if masters:
        h.update(b"masters" + _npz_digest(masters).encode())
    for index, path in sorted(getattr(plan, "masters_by_frame", {}).items()):
        if path not in digests:
            digests[path] = _npz_digest(path)
        h.update(f"{index}:{digests[path]}".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- records


def _encode(plan: str, sha256: str, fields: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """One record's bytes: header, digest and payload."""
    layout, blobs, offset = [], [], 0
    for name, arr in arrays.items():
        a = np.asarray(arr)
        if a.dtype == object:  # status strings: stored as fixed-width unicode
            a = a.astype(str)
        a = np.asarray(a, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
        b = a.tobytes()
        was = str(np.asarray(arr).dtype)
        layout.append([name, a.dtype.str, list(a.shape), offset, len(b), was])
        blobs.append(b)
        offset += len(b)
    header = json.dumps(
        {"plan": plan, "sha256": sha256, "fields": fields, "arrays": layout},
        allow_nan=True,
        separators=(",", ":"),
    ).encode()
    payload = struct.pack("<I", len(header)) + header + b"".join(blobs)
    return _HEAD.pack(_REC, len(payload), hashlib.sha256(payload).digest()) + payload


def _decode(payload: bytes) -> dict[str, Any]:
    """A record's header dict, with its arrays restored under "columns"."""
    (n,) = struct.unpack_from("<I", payload)
    head = json.loads(payload[4 : 4 + n])
    base = 4 + n
    cols = {}
    for name, dtype, shape, off, size, orig in head.pop("arrays"):
        dt = np.dtype(dtype)
        if size:
            a = np.frombuffer(payload, dtype=dt, count=size // dt.itemsize, offset=base + off)
            a = a.reshape(tuple(shape)).copy()
        else:
            a = np.empty(shape, dt)
        cols[name] = a.astype(object) if orig == "object" else a
    head["columns"] = cols
    return head


def _scan(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (end offset, record) for each whole, intact record of a checkpoint file."""
    with open(path, "rb") as fh:
        if fh.read(len(_MAGIC)) != _MAGIC:
            return
        pos = len(_MAGIC)
        while True:
            head = fh.read(_HEAD.size)
            if len(head) < _HEAD.size:
                return
            magic, n, digest = _HEAD.unpack(head)
            if magic != _REC:
                return
            payload = fh.read(n)
            if len(payload) < n or hashlib.sha256(payload).digest() != digest:
                return
            pos += _HEAD.size + n
            yield pos, _decode(payload)


def read_records(path: str | Path, plan: str | None = None) -> list[dict[str, Any]]:
    """Every intact record of a checkpoint (of one plan key if given); [] if there is none."""
    path = Path(path)
    if not path.exists():
        return []
    return [r for _, r in _scan(path) if plan is None or r["plan"] == plan]


class Checkpoint:
    """An open checkpoint file: load what an earlier run measured, append each new frame."""

    def __init__(self, path: str | Path, plan: str, resume: bool) -> None:
        self.path = Path(path)
        self.plan = plan
        self.saved: dict[str, dict[str, Any]] = {}
        good_end = 0
        if resume and self.path.exists():
            for end, rec in _scan(self.path):
                good_end = end
                if rec["plan"] == plan:
                    self.saved[rec["sha256"]] = rec
        if good_end:
            size = self.path.stat().st_size
            if size > good_end:
                log.warning(
                    "%s: %d bytes after the last intact record (an interrupted write) cut away",
                    self.path,
                    size - good_end,
                )
                os.truncate(self.path, good_end)
        else:
            if resume and self.path.exists():
                log.warning("%s: not a tsphot checkpoint or empty; starting afresh", self.path)
            _write_fresh(self.path)
        self._fh = open(self.path, "ab")  # held open for the run
        self._synced = time.monotonic()
        self.appended = 0

    def append(self, sha256: str, fields: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Append one measured frame's record, flushed to the operating system at once."""
        self._fh.write(_encode(self.plan, sha256, fields, arrays))
        self._fh.flush()
        self.appended += 1
        if time.monotonic() - self._synced > _FSYNC_EVERY_S:
            os.fsync(self._fh.fileno())
            self._synced = time.monotonic()

    def close(self) -> None:
        """Flush to disk and close."""
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_fresh(path: Path) -> None:
    """Replace any checkpoint at path with an empty one, atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(_MAGIC)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)

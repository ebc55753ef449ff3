"""Uploads: the request body is streamed to a temporary file while it is hashed and counted
(never held in memory, cut off at the size limit or the user's remaining quota), checked to be
FITS, and kept once per SHA-256 however many users or times it is uploaded."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request

HEADER_BLOCK = 2880
FITS_TYPES = ("application/fits", "image/fits", "application/octet-stream")


class UploadRefused(Exception):
    """An upload that cannot be kept: status code, message and the form field at fault."""

    def __init__(self, status: int, message: str, field: str = "file") -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


@dataclass
class Received:
    """A file streamed to disk: where, its SHA-256, size and the client's file name."""

    path: Path
    sha256: str
    size: int
    filename: str


def safe_filename(name: str) -> str:
    """A file name that is safe on disk: no folders, no control or odd characters."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", name).lstrip(".")[:200]
    return name or "upload.fits"


class _Sink:
    """Writes, hashes and counts bytes; refuses past the limit."""

    def __init__(self, tmp_dir: Path, limit: int, limit_msg: str) -> None:
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="up-", suffix=".part")
        self.fh = os.fdopen(fd, "wb")
        self.path = Path(name)
        self.hash = hashlib.sha256()
        self.size = 0
        self.limit, self.limit_msg = limit, limit_msg

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise UploadRefused(413, self.limit_msg)
        self.hash.update(data)
        self.fh.write(data)

    def close(self) -> None:
        if not self.fh.closed:
            self.fh.close()

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


async def receive(request: Request, tmp_dir: Path, limit: int, limit_msg: str) -> Received:
    """Stream the request's file to disk: multipart/form-data with one part named 'file', or a
    raw body (application/fits or octet-stream, file name in ?filename=)."""
    from python_multipart import MultipartParser
    from python_multipart.multipart import parse_options_header

    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    clen = request.headers.get("content-length")
    if clen is not None and clen.isdigit() and int(clen) > limit + 64 * 1024:
        raise UploadRefused(413, limit_msg)
    sink = _Sink(tmp_dir, limit, limit_msg)
    try:
        if ctype == b"multipart/form-data":
            boundary = params.get(b"boundary")
            if not boundary:
                raise UploadRefused(422, "multipart body without a boundary", "body")
            filename = await _multipart(request, sink, boundary, MultipartParser)
        elif ctype.decode("latin-1") in FITS_TYPES:
            async for chunk in request.stream():
                sink.write(chunk)
            filename = request.query_params.get("filename", "upload.fits")
        else:
            raise UploadRefused(
                415,
                "send the file as multipart/form-data (form field 'file') or as a raw "
                f"application/fits body; got content type {ctype.decode('latin-1')!r}",
                "content-type",
            )
        sink.close()
        if sink.size == 0:
            raise UploadRefused(422, "the file is empty")
        return Received(sink.path, sink.hash.hexdigest(), sink.size, safe_filename(filename))
    except BaseException:
        sink.discard()
        raise


async def _multipart(request: Request, sink: _Sink, boundary: bytes, parser_cls: Any) -> str:
    state: dict[str, Any] = {"field": b"", "headers": {}, "name": None, "filename": None}
    found: dict[str, Any] = {"file": False, "filename": "upload.fits", "other": []}
    errors: list[UploadRefused] = []

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        key = state["field"].lower()
        state["headers"][key] = state["headers"].get(key, b"") + data[start:end]

    def on_header_end() -> None:
        state["field"] = b""

    def on_headers_finished() -> None:
        from python_multipart.multipart import parse_options_header

        _, opts = parse_options_header(state["headers"].get(b"content-disposition", b""))
        state["name"] = opts.get(b"name", b"").decode("utf-8", "replace")
        state["filename"] = opts.get(b"filename")
        if state["name"] == "file":
            if found["file"]:
                errors.append(UploadRefused(422, "one file per upload: 'file' given twice"))
            found["file"] = True
            if state["filename"]:
                found["filename"] = state["filename"].decode("utf-8", "replace")
        else:
            found["other"].append(state["name"])

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["name"] == "file" and not errors:
            sink.write(data[start:end])

    def on_part_begin() -> None:
        state.update(field=b"", headers={}, name=None, filename=None)

    parser = parser_cls(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if errors:
                raise errors[0]
        parser.finalize()
    except UploadRefused:
        raise
    except Exception as exc:  # the parser's own complaints about a malformed body
        raise UploadRefused(422, f"malformed multipart body ({exc})", "body") from None
    if errors:
        raise errors[0]
    if not found["file"]:
        other = ", ".join(repr(n) for n in found["other"]) or "none"
        raise UploadRefused(
            422, f"no form field 'file' in the upload (fields given: {other})", "file"
        )
    return found["filename"]


def check_fits(path: Path) -> str | None:
    """None if the file starts with a readable FITS primary header, else why not."""
    from astropy.io import fits

    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
        opener = gzip.open if magic == b"\x1f\x8b" else open
        with opener(path, "rb") as fh:
            head = fh.read(HEADER_BLOCK * 36)
    except (OSError, EOFError) as exc:
        return f"cannot be read ({exc})"
    if not head.startswith(b"SIMPLE  =") or head[29:30] != b"T":
        return "not a FITS file (it does not start with the card 'SIMPLE  =                    T')"
    cards = [head[i : i + 80] for i in range(0, len(head) - 79, 80)]
    end = next((k for k, c in enumerate(cards) if c.rstrip() == b"END"), None)
    if end is None:
        return "FITS primary header has no END card within its first 36 blocks"
    try:
        hdr = fits.Header.fromstring(b"".join(cards[: end + 1]).decode("ascii"))
        int(hdr["NAXIS"])
    except Exception as exc:
        return f"FITS primary header cannot be read ({type(exc).__name__}: {exc})"
    return None


def store_blob(uploads_dir: Path, tmp: Path, sha256: str) -> Path:
    """Keep the file once per SHA-256 (an identical file already kept is reused)."""
    blob = uploads_dir / sha256[:2] / sha256
    blob.parent.mkdir(parents=True, exist_ok=True)
    if blob.exists():
        tmp.unlink(missing_ok=True)
    else:
        os.replace(tmp, blob)
    return blob


def blob_path(uploads_dir: Path, sha256: str) -> Path:
    """Where the bytes of an upload are kept."""
    return uploads_dir / sha256[:2] / sha256

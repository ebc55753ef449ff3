"""What the web page needs beyond the runs' records: the reference frame of a set of exposures
with its stars, zscaled pictures of frames and cut-outs, the data root's folders, a running
run's progress with its rejected frames, and a finished run's exports. The page itself (static
files, no build step) is served at ``/`` by ``mount_page``."""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from sqlalchemy import select

from tsphot import ingest
from tsphot import records as rec
from tsphot.api import models as m
from tsphot.api import paths, preview, uploads
from tsphot.api import schemas as sch
from tsphot.api.routes import (
    COMMON,
    DB,
    NAME_RE,
    R401,
    R409,
    RESOURCE,
    RunId,
    St,
    State,
    Who,
    _err,
    _field_err,
    _product,
    _run_row,
    _upload_row,
)
from tsphot.errors import TsphotError

STATIC = Path(__file__).with_name("static")
PROGRESS_FILE = "progress.json"  # in the run's folder, written by its worker
# The page loads nothing from elsewhere: scripts, styles and pictures come from this server.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)

router = APIRouter()


class PNGResponse(Response):
    """A PNG picture."""

    media_type = "image/png"


PNG = {200: {"content": {"image/png": {}}, "description": "a zscaled 8-bit PNG"}}


class Star(BaseModel):
    """A star detected on a frame."""

    x: float = Field(..., description="0-based column (px)")
    y: float = Field(..., description="0-based row (px)")
    fwhm: float | None = Field(None, description="px, from its second moments")
    peak: float | None = Field(None, description="raw ADU, maximum within 2 px")
    saturated: bool = Field(False, description="peak at or above the saturation level")


class Reference(BaseModel):
    """The exposure a run of these files takes as its reference, with its stars."""

    index: int = Field(..., description="its place in the files given (uploads, then paths)")
    upload: uuid.UUID | None = Field(None, description="the upload, if it is one")
    path: str | None = Field(None, description="its path under the data root, if it is one")
    filename: str
    n_files: int
    width: int
    height: int
    bin: int = Field(..., description="the picture's binning (a large frame is shown binned)")
    date_obs: str
    jd_utc_mid: float | None
    filter: str
    saturation: float = Field(..., description="ADU: the header's, or 65535")
    fwhm: float | None = Field(None, description="median FWHM of the frame's stars (px)")
    background: float | None = Field(None, description="median sky (ADU)")
    stars: list[Star]


class FolderEntry(BaseModel):
    """A folder or FITS file under the data root."""

    name: str
    kind: str = Field(..., description="'folder' or 'fits'")
    size_bytes: int | None = None


class Folder(BaseModel):
    """A folder of the data root."""

    path: str
    entries: list[FolderEntry]


class RejectedFrame(BaseModel):
    """A frame that gave no measurement, and why."""

    frame: int
    file: str
    status: str
    reason: str


class RunProgress(BaseModel):
    """A run's state, frames measured of the total, and the frames rejected so far."""

    status: str
    reason: str
    done: int
    total: int
    rejected: list[RejectedFrame]


class ExportFile(BaseModel):
    """A file of the run's exports (the formats asked for in `exports`)."""

    name: str
    size_bytes: int


# ----------------------------------------------------------------------------- frames


def _files_of(s: Any, st: State, who: Any, fs: sch.FileSet) -> list[tuple[str, Any, str | None]]:
    """(server file, upload id or None, data-root path or None) for each file of a FileSet."""
    out: list[tuple[str, Any, str | None]] = []
    if fs.uploads:
        q = select(m.Upload).where(m.Upload.id.in_(fs.uploads))
        if not who.is_admin:
            q = q.where(m.Upload.owner_id == who.id)
        found = {u.id: u for u in s.scalars(q)}
        for i, up_id in enumerate(fs.uploads):
            u = found.get(up_id)
            if u is None:
                raise _field_err(["body", "uploads", i], f"no upload {up_id} of yours")
            out.append((str(uploads.blob_path(st.cfg.uploads_dir, u.sha256)), u, None))
    for i, entry in enumerate(fs.paths):
        try:
            files = paths.confine(st.cfg.data_root, entry)
        except paths.PathRefused as exc:
            raise _field_err(["body", "paths", i], str(exc), "path_refused") from None
        root = str(st.cfg.data_root)
        out.extend((f, None, os.path.relpath(f, root)) for f in files)
    if not out:
        raise _field_err(["body"], "no files: give upload ids and/or paths under the data root")
    return out


@router.post(
    "/reference",
    response_model=Reference,
    tags=["page"],
    responses={**R401, 422: {"description": "no usable exposure, or a file not the caller's"}},
)
def reference(body: sch.FileSet, who: Who, s: DB, st: St) -> Any:
    """The reference frame of these exposures (the first usable one by mid-exposure time, as
    a run takes it) and its stars: where targets and comparison stars are placed."""
    files = _files_of(s, st, who, body)
    try:
        index, info = preview.reference_frame([f for f, _, _ in files])
        data, _ = ingest.read_pixels(info.path, info.pedestal)
    except TsphotError as exc:
        text = str(exc)
        for f, upload, rel in files:  # the client's names for its files, not the server's
            text = text.replace(f, upload.filename if upload is not None else rel)
        raise _field_err(["body"], text, "no_reference") from None
    saturation = float(info.saturation or 65535.0)
    found = preview.stars(data, saturation)
    _, upload, rel = files[index]
    ny, nx = data.shape
    return Reference(
        index=index,
        upload=upload.id if upload is not None else None,
        path=rel,
        filename=upload.filename if upload is not None else Path(info.path).name,
        n_files=len(files),
        width=nx,
        height=ny,
        bin=preview.display_bin(data.shape),
        date_obs=info.date_obs,
        jd_utc_mid=info.jd_utc_mid if math.isfinite(info.jd_utc_mid) else None,
        filter=info.filter,
        saturation=saturation,
        **found,
    )


def _png(path: str, name: str, loc: list[str], bin_: int | None) -> Response:
    """A file's zscaled picture; errors name the file as the client knows it."""
    try:
        data, _ = ingest.read_pixels(path)
    except TsphotError as exc:
        raise _field_err(loc, str(exc).replace(path, name), "not_an_image") from None
    png, lo, hi = preview.zscale_png(data, bin_ or preview.display_bin(data.shape))
    return PNGResponse(png, headers={"X-Zscale-Low": f"{lo:.6g}", "X-Zscale-High": f"{hi:.6g}"})


Bin = Annotated[int | None, Query(ge=1, le=16, description="binning (default: fit 2048 px)")]


@router.get(
    "/uploads/{upload_id}/image.png",
    response_class=Response,  # (errors stay documented as JSON; 200 is the PNG below)
    tags=["page"],
    responses={**COMMON, **PNG},
)
def upload_image(upload_id: uuid.UUID, who: Who, s: DB, st: St, bin: Bin = None) -> Any:
    """An uploaded exposure as a zscaled picture."""
    u, _ = _upload_row(s, upload_id, who)
    blob = str(uploads.blob_path(st.cfg.uploads_dir, u.sha256))
    return _png(blob, u.filename, ["path", "upload_id"], bin)


RelPath = Annotated[str, Query(max_length=4096, description="a path under the data root")]


def _one_file(st: State, path: str) -> str:
    try:
        found = paths.confine(st.cfg.data_root, path)
    except paths.PathRefused as exc:
        raise _field_err(["query", "path"], str(exc), "path_refused") from None
    if len(found) != 1:
        raise _field_err(["query", "path"], f"{path!r}: names {len(found)} files, not one")
    return found[0]


@router.get(
    "/files/image.png",
    response_class=Response,  # (errors stay documented as JSON; 200 is the PNG below)
    tags=["page"],
    responses={**R401, **PNG},
)
def file_image(path: RelPath, who: Who, st: St, bin: Bin = None) -> Any:
    """An exposure under the data root as a zscaled picture."""
    return _png(_one_file(st, path), path, ["query", "path"], bin)


@router.get("/files", response_model=Folder, tags=["page"], responses=R401)
def list_folder(who: Who, st: St, path: Annotated[str, Query(max_length=4096)] = "") -> Any:
    """Folders and FITS files of a folder under the data root (the root itself by default)."""
    if st.cfg.data_root is None:
        raise _field_err(
            ["query", "path"], "server folders are not enabled on this server (no data root)"
        )
    rel = path.strip("/")
    if rel and (".." in Path(rel).parts or "\x00" in rel):
        raise _field_err(["query", "path"], f"{path!r}: give a folder inside the data root")
    root = str(st.cfg.data_root)
    full = os.path.realpath(os.path.join(root, rel))
    if not (full == root or full.startswith(root + os.sep)) or not os.path.isdir(full):
        raise _field_err(["query", "path"], f"{path!r}: no such folder under the data root")
    entries = []
    for e in sorted(os.scandir(full), key=lambda e: e.name):
        real = os.path.realpath(e.path)
        if not (real == root or real.startswith(root + os.sep)) or e.name.startswith("."):
            continue
        if e.is_dir():
            entries.append(FolderEntry(name=e.name, kind="folder"))
        elif e.is_file() and e.name.lower().endswith(ingest.FITS_SUFFIXES):
            entries.append(FolderEntry(name=e.name, kind="fits", size_bytes=e.stat().st_size))
    return Folder(path="" if full == root else os.path.relpath(full, root), entries=entries)


# ----------------------------------------------------------------------------- runs


def _stack(s: Any, run_id: uuid.UUID) -> Any:
    r = s.execute(select(m.exposure_stacks).where(m.exposure_stacks.c.tool_id == run_id)).first()
    return None if r is None else m.from_row(rec.TimeSeriesPhotometryToolExposureStack, r)


@router.get(
    RESOURCE + "/{run_id}/progress", response_model=RunProgress, tags=["page"], responses=COMMON
)
def get_progress(run_id: RunId, who: Who, s: DB, st: St) -> Any:
    """Frames measured of the total and the frames rejected so far, with their reasons."""
    row = _run_row(s, run_id, who)
    rejected: list[RejectedFrame] = []
    stack = _stack(s, run_id) if row.status == "done" else None
    if stack is not None:  # the run's own record of every exposure
        rejected = [
            RejectedFrame(
                frame=e.order,
                file=Path(e.path).name,
                status=e.status,
                reason=e.reason.replace(e.path, Path(e.path).name),  # no server paths
            )
            for e in stack.exposures
            if e.status != "ok"
        ]
    else:
        try:
            got = json.loads((st.cfg.run_dir(run_id) / PROGRESS_FILE).read_text())
            rejected = [RejectedFrame.model_validate(r) for r in got.get("rejected", [])]
        except (OSError, ValueError):
            pass  # not started yet
    return RunProgress(
        status=row.status,
        reason=row.reason or "",
        done=row.progress_done,
        total=row.progress_total,
        rejected=sorted(rejected, key=lambda r: r.frame),
    )


@router.get(
    RESOURCE + "/{run_id}/frames/{frame}/cutout.png",
    response_class=Response,  # (errors stay documented as JSON; 200 is the PNG below)
    tags=["page"],
    responses={**COMMON, **R409, **PNG},
)
def frame_cutout(
    run_id: RunId,
    frame: Annotated[int, PathParam(ge=0, le=10**7, description="the frame's order in the run")],
    who: Who,
    s: DB,
    x: Annotated[float, Query(ge=-1e6, le=1e6, description="centre column (px)")],
    y: Annotated[float, Query(ge=-1e6, le=1e6, description="centre row (px)")],
    half: Annotated[int, Query(ge=4, le=256, description="half-width of the box (px)")] = 32,
) -> Any:
    """A cut-out of one frame of a finished run, zscaled; its corner is (round(x) − half,
    round(y) − half) clipped to the frame, also in the X-Cutout-X0/Y0 headers."""
    row = _run_row(s, run_id, who)
    stack = _stack(s, run_id)
    if stack is None:
        raise _err(409, f"run {run_id} is {row.status}: its frames are known when it is done")
    exp = next((e for e in stack.exposures if e.order == frame), None)
    if exp is None:
        raise _err(404, f"run {run_id} has no frame {frame} (it has {len(stack.exposures)})")
    try:
        data, _ = ingest.read_pixels(exp.path)
        box, x0, y0 = preview.cutout(data, x, y, half)
    except TsphotError as exc:
        raise _field_err(["query"], str(exc).replace(exp.path, Path(exp.path).name)) from None
    png, _, _ = preview.zscale_png(box)
    return PNGResponse(png, headers={"X-Cutout-X0": str(x0), "X-Cutout-Y0": str(y0)})


@router.get(
    RESOURCE + "/{run_id}/exports",
    response_model=list[ExportFile],
    tags=["products"],
    responses={**COMMON, **R409},
)
def list_exports(run_id: RunId, who: Who, s: DB, st: St) -> Any:
    """The files of the export formats the run was asked for (`settings.exports`)."""
    row = _run_row(s, run_id, who)
    if row.status != "done":
        raise _err(409, f"run {run_id} is {row.status}: its exports are written when it is done")
    folder = st.cfg.run_dir(run_id) / "out" / "exports"
    if not folder.is_dir():
        return []
    return [
        ExportFile(name=p.name, size_bytes=p.stat().st_size)
        for p in sorted(folder.iterdir())
        if p.is_file() and NAME_RE.match(p.name)
    ]


@router.get(
    RESOURCE + "/{run_id}/exports/{name}",
    tags=["products"],
    response_class=FileResponse,
    responses={
        **COMMON,
        **R409,
        200: {"content": {"application/octet-stream": {}}, "description": "the file"},
    },
)
def get_export(
    run_id: RunId,
    name: Annotated[str, PathParam(max_length=100, description="a name from …/exports")],
    who: Who,
    s: DB,
    st: St,
) -> Any:
    """One export file."""
    if not NAME_RE.match(name):
        raise _err(404, f"no export {name!r}")
    path = _product(s, st, run_id, who, f"exports/{name}")
    return FileResponse(path, media_type="application/octet-stream", filename=name)


# ----------------------------------------------------------------------------- the page


def mount_page(app: FastAPI) -> None:
    """Serve the page: ``/`` is index.html, ``/static/…`` its scripts and styles."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    @app.middleware("http")
    async def _page_headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        p = request.url.path
        if p == "/" or p.startswith("/static/"):
            response.headers["Content-Security-Policy"] = PAGE_CSP
            response.headers["X-Content-Type-Options"] = "nosniff"
            response.headers["Cache-Control"] = "no-cache"
        return response


def write_progress(path: Path, rejected: list[dict[str, Any]]) -> None:
    """Write a running run's rejected frames for …/progress (atomically: the API reads it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rejected": rejected}))
    os.replace(tmp, path)

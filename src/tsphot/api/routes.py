"""The resources under /api/v1/: runs of the tool (``time_series_photometry_tools``), their
records and products, and uploads. Every handler answers in words: 401 without a good token, 404
for a run or upload that is not the caller's, 409 for products of an unfinished run, 413/415/422
for an upload or a body that cannot be used (422 names the field)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tsphot import __version__
from tsphot import records as rec
from tsphot.api import auth, jobs, paths, uploads
from tsphot.api import models as m
from tsphot.api import schemas as sch
from tsphot.api.config import ServerConfig

RESOURCE = "/time_series_photometry_tools"
AUTH_TTL_S = 10.0
PAGE_CACHE_BYTES = 64 << 20
NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,100}$")

bearer = HTTPBearer(auto_error=False, description="an API token from `tsphot users add NAME`")

R401 = {401: {"model": sch.Message, "description": "no token, or a token not recognised"}}
R404 = {404: {"model": sch.Message, "description": "no such run or upload of the caller's"}}
R409 = {409: {"model": sch.Message, "description": "the run has not finished yet"}}
COMMON = {**R401, **R404}


def _err(status: int, msg: str) -> HTTPException:
    return HTTPException(status_code=status, detail=msg)


def _field_err(loc: list[Any], msg: str, kind: str = "value_error") -> HTTPException:
    """A 422 in FastAPI's own shape, naming the field."""
    return HTTPException(status_code=422, detail=[{"loc": loc, "msg": msg, "type": kind}])


class State:
    """What handlers share: the config, the session factory, the dispatcher, caches."""

    def __init__(self, cfg: ServerConfig, sm: Any, dispatcher: Any) -> None:
        self.cfg, self.sm, self.dispatcher = cfg, sm, dispatcher
        self._versions: dict[str, str] | None = None
        self.auth_cache: dict[str, tuple[auth.Principal, float]] = {}
        # pages of finished runs' results never change: their JSON is kept (bounded)
        self.pages: OrderedDict[tuple, bytes] = OrderedDict()
        self.pages_bytes = 0
        self.lock = threading.Lock()

    def page_get(self, key: tuple) -> bytes | None:
        """A cached results page."""
        with self.lock:
            data = self.pages.get(key)
            if data is not None:
                self.pages.move_to_end(key)
            return data

    def page_put(self, key: tuple, data: bytes) -> None:
        """Keep a results page, dropping the least recently used beyond PAGE_CACHE_BYTES."""
        with self.lock:
            if key in self.pages:
                return
            self.pages[key] = data
            self.pages_bytes += len(data)
            while self.pages_bytes > PAGE_CACHE_BYTES and self.pages:
                _, old = self.pages.popitem(last=False)
                self.pages_bytes -= len(old)

    def forget_run(self, run_id: uuid.UUID) -> None:
        """Drop a deleted run's cached pages."""
        with self.lock:
            for key in [k for k in self.pages if k[0] == run_id]:
                self.pages_bytes -= len(self.pages.pop(key))

    def versions(self) -> dict[str, str]:
        """Versions of tsphot and its dependencies (read once)."""
        if self._versions is None:
            from tsphot.products.export import versions

            self._versions = versions()
        return self._versions


async def state(request: Request) -> State:
    """The app's shared state."""
    return request.app.state.tsphot


async def session(st: Annotated[State, Depends(state)]) -> Any:
    """A database session for one request (it connects on first use, in the handler)."""
    with st.sm() as s:
        yield s


async def principal(
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    st: Annotated[State, Depends(state)],
) -> auth.Principal:
    """The caller, from the Bearer token (known tokens are remembered for a few seconds, so
    a poll costs no token query; a revoked token stops working within AUTH_TTL_S)."""
    if creds is None or not creds.credentials:
        raise HTTPException(
            401,
            "no API token: send the header 'Authorization: Bearer TOKEN' "
            "(an administrator creates one with `tsphot users add NAME`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key = auth.hash_token(creds.credentials)
    now = time.monotonic()
    hit = st.auth_cache.get(key)
    if hit is not None and hit[1] > now:
        return hit[0]

    def lookup() -> auth.Principal | None:
        with st.sm() as s:
            return auth.lookup(s, creds.credentials)

    who = await run_in_threadpool(lookup)
    if who is None:
        raise HTTPException(
            401,
            "API token not recognised (mistyped, or revoked): ask for a new one",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    if len(st.auth_cache) > 10_000:
        st.auth_cache.clear()
    st.auth_cache[key] = (who, now + AUTH_TTL_S)
    return who


Who = Annotated[auth.Principal, Depends(principal)]
DB = Annotated[Session, Depends(session)]
St = Annotated[State, Depends(state)]
RunId = Annotated[uuid.UUID, PathParam(description="the run's id")]

router = APIRouter()


@router.get("/health", response_model=sch.Health, tags=["service"])
def health(st: St) -> sch.Health:
    """The service is up (no token needed)."""
    return sch.Health(version=__version__, database=st.cfg.url.split(":", 1)[0])


# ----------------------------------------------------------------------------- runs


def _visible(who: auth.Principal) -> Any:
    return True if who.is_admin else (m.tools.c.owner_id == who.id)


# One run's row with its owner's name, built once: building the statement costs more than
# running it, and every status poll runs it (an admin's form, and a user's own-runs form).
_RUN_ANY = (
    select(m.tools, m.User.name.label("owner"))
    .join(m.User, m.User.id == m.tools.c.owner_id)
    .where(m.tools.c.id == bindparam("run_id"))
)
_RUN_OWN = _RUN_ANY.where(m.tools.c.owner_id == bindparam("owner_id"))


def _run_row(s: Session, run_id: uuid.UUID, who: auth.Principal) -> Any:
    if who.is_admin:
        q, params = _RUN_ANY, {"run_id": run_id}
    else:
        q, params = _RUN_OWN, {"run_id": run_id, "owner_id": who.id}
    row = s.connection().execute(q, params).first()
    if row is None:
        raise _err(404, f"no run {run_id} of yours")
    return row


def _resolve(
    s: Session,
    st: State,
    who: auth.Principal,
    fs: sch.FileSet,
    kind: str,
    key: str,
    inputs: Path,
) -> list[str]:
    """The files of one FileSet: uploads linked into the run's inputs, paths confined."""
    files: list[str] = []
    if fs.uploads:
        q = select(m.Upload).where(m.Upload.id.in_(fs.uploads))
        if not who.is_admin:
            q = q.where(m.Upload.owner_id == who.id)
        found = {u.id: u for u in s.scalars(q)}
        folder = inputs / kind
        taken: set[str] = set()
        for i, up_id in enumerate(fs.uploads):
            u = found.get(up_id)
            if u is None:
                raise _field_err(["body", key, "uploads", i], f"no upload {up_id} of yours")
            name = u.filename
            stem, dot, ext = name.partition(".")
            k = 1
            while name in taken:  # two uploads of the same name: both kept
                k += 1
                name = f"{stem}_{k}{dot}{ext}"
            taken.add(name)
            folder.mkdir(parents=True, exist_ok=True)
            src = uploads.blob_path(st.cfg.uploads_dir, u.sha256)
            dst = folder / name
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
            files.append(str(dst))
    for i, entry in enumerate(fs.paths):
        try:
            files.extend(paths.confine(st.cfg.data_root, entry))
        except paths.PathRefused as exc:
            raise _field_err(["body", key, "paths", i], str(exc), "path_refused") from None
    return files


@router.post(
    RESOURCE,
    status_code=201,
    response_model=sch.Run,
    tags=["runs"],
    responses={**R401, 422: {"description": "a field cannot be used; the field is named"}},
)
def create_run(body: sch.RunCreate, who: Who, s: DB, st: St, response: Response) -> sch.Run:
    """Create a run from settings and exposures (uploads and/or paths under the data root);
    it starts as `pending` and a worker takes it up."""
    if not body.exposures.uploads and not body.exposures.paths:
        raise _field_err(
            ["body", "exposures"], "no exposures: give upload ids and/or paths under the data root"
        )
    run_id = uuid.uuid4()
    run_dir = st.cfg.run_dir(run_id)
    try:
        inputs = {
            kind: _resolve(s, st, who, getattr(body, key), kind, key, run_dir / "inputs")
            for kind, key in (
                ("frames", "exposures"),
                ("bias", "bias"),
                ("dark", "dark"),
                ("flat", "flat"),
            )
        }
        science = body.settings.model_dump(exclude_unset=True)
        try:
            settings = jobs.settings_for_run(st.cfg, run_id, science, inputs)
        except ValidationError as exc:
            detail = []
            for e in exc.errors():
                loc = ["body", "settings", *e["loc"]] if e["loc"] else ["body", "settings"]
                detail.append({"loc": loc, "msg": e["msg"], "type": e["type"]})
            raise HTTPException(422, detail) from None
        tool = rec.TimeSeriesPhotometryTool(
            id=run_id,
            name=body.name or f"run {str(run_id)[:8]}",
            settings=settings.model_dump(mode="json"),
            out_dir=settings.out,
            tsphot_version=__version__,
            versions=st.versions(),
            n_exposures=len(inputs["frames"]),
        )
        s.execute(insert(m.tools).values(**m.to_row(tool), owner_id=who.id))
        s.commit()
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    view = sch.run_view(_run_row(s, run_id, who), who.name)  # as created: pending
    st.dispatcher.wake()
    response.headers["Location"] = f"/api/v1{RESOURCE}/{run_id}"
    return view


@router.get(RESOURCE, response_model=sch.Page[sch.Run], tags=["runs"], responses=R401)
def list_runs(
    who: Who,
    s: DB,
    status: Annotated[rec.RunStatus | None, Query(description="only runs in this state")] = None,
    owner: Annotated[str | None, Query(max_length=64, description="only this user's")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> sch.Page[sch.Run]:
    """Runs the caller may see (an admin sees all), newest first."""
    cond = [_visible(who)]
    if status is not None:
        cond.append(m.tools.c.status == status.value)
    if owner is not None:
        cond.append(m.User.name == owner)
    base = select(m.tools, m.User.name.label("owner")).join(m.User, m.User.id == m.tools.c.owner_id)
    total = s.scalar(
        select(func.count())
        .select_from(m.tools)
        .join(m.User, m.User.id == m.tools.c.owner_id)
        .where(*cond)
    )
    rows = s.execute(
        base.where(*cond).order_by(m.tools.c.created.desc()).limit(limit).offset(offset)
    ).all()
    return sch.Page[sch.Run](
        items=[sch.run_view(r, r.owner) for r in rows], total=total or 0, limit=limit, offset=offset
    )


@router.get(RESOURCE + "/{run_id}", response_model=sch.Run, tags=["runs"], responses=COMMON)
async def get_run(run_id: RunId, who: Who, s: DB) -> sch.Run:
    """One run: its record, owner and progress."""
    row = _run_row(s, run_id, who)
    return Response(sch.run_view(row, row.owner).model_dump_json(), media_type="application/json")


@router.delete(
    RESOURCE + "/{run_id}",
    tags=["runs"],
    response_model=sch.Run,
    responses={
        **COMMON,
        200: {"description": "the run was pending or running: it is cancelled (status failed)"},
        204: {"description": "the run had finished: it is deleted with its files"},
    },
)
def delete_run(run_id: RunId, who: Who, s: DB, st: St) -> Any:
    """Cancel a pending or running run, or delete a finished one with its files."""
    row = _run_row(s, run_id, who)
    t = m.tools.c
    if row.status in ("pending", "running"):
        n = s.execute(
            update(m.tools)
            .where(t.id == run_id, t.status.in_(("pending", "running")))
            .values(
                status="failed",
                reason=f"cancelled by {who.name}",
                finished=rec.utcnow(),
                lease_until=None,
            )
        ).rowcount
        s.commit()
        if n:
            st.dispatcher.wake()
            row = _run_row(s, run_id, who)
            return sch.run_view(row, row.owner)
        row = _run_row(s, run_id, who)  # it finished meanwhile: delete it
    for table in (m.results, m.tool_objects, m.exposure_stacks, m.stack_files):
        s.execute(delete(table).where(table.c.tool_id == run_id))
    s.execute(delete(m.tools).where(t.id == run_id))
    s.commit()
    st.forget_run(run_id)
    shutil.rmtree(st.cfg.run_dir(run_id), ignore_errors=True)
    return Response(status_code=204)


@router.get(
    RESOURCE + "/{run_id}/objects",
    response_model=list[rec.TimeSeriesPhotometryToolObject],
    tags=["records"],
    responses=COMMON,
)
def get_objects(run_id: RunId, who: Who, s: DB) -> Any:
    """The run's targets, comparison and check stars (empty until it is done)."""
    _run_row(s, run_id, who)
    rows = s.execute(select(m.tool_objects).where(m.tool_objects.c.tool_id == run_id)).all()
    objs = [m.from_row(rec.TimeSeriesPhotometryToolObject, r) for r in rows]
    order = {"target": 0, "comp": 1, "check": 2}
    return sorted(objs, key=lambda o: (order.get(o.role, 3), _natural(o.name)))


def _natural(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


@router.get(
    RESOURCE + "/{run_id}/exposure_stack",
    response_model=rec.TimeSeriesPhotometryToolExposureStack,
    tags=["records"],
    responses={**COMMON, **R409},
)
def get_stack(run_id: RunId, who: Who, s: DB) -> Any:
    """The ordered exposures the run consumed."""
    row = _run_row(s, run_id, who)
    r = s.execute(select(m.exposure_stacks).where(m.exposure_stacks.c.tool_id == run_id)).first()
    if r is None:
        raise _err(409, f"run {run_id} is {row.status}: its exposure stack is recorded when done")
    return m.from_row(rec.TimeSeriesPhotometryToolExposureStack, r)


@router.get(
    RESOURCE + "/{run_id}/stack_files",
    response_model=list[rec.TimeSeriesPhotometryStackFile],
    tags=["records"],
    responses=COMMON,
)
def get_stack_files(run_id: RunId, who: Who, s: DB) -> Any:
    """The run's stack bundles (GET …/bundle downloads one)."""
    _run_row(s, run_id, who)
    rows = s.execute(select(m.stack_files).where(m.stack_files.c.tool_id == run_id)).all()
    return [m.from_row(rec.TimeSeriesPhotometryStackFile, r) for r in rows]


TABLE_TYPES = {"csv": "text/csv; charset=utf-8", "ecsv": "text/plain; charset=utf-8"}


@router.get(
    RESOURCE + "/{run_id}/results",
    response_model=sch.Page[rec.TimeSeriesPhotometryToolResult],
    tags=["records"],
    responses={
        **COMMON,
        200: {
            "description": "a page of result records (JSON), or the whole selection as a table",
            "content": {"text/csv": {}, "text/plain": {}},
        },
    },
)
async def get_results(
    run_id: RunId,
    who: Who,
    s: DB,
    st: St,
    object: Annotated[str | None, Query(max_length=100, description="only this object")] = None,
    status: Annotated[
        str | None, Query(max_length=100, description="only rows of this status")
    ] = None,
    format: Annotated[
        Literal["json", "csv", "ecsv"], Query(description="json pages, or a table")
    ] = "json",
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> Any:
    """Photometry per object per exposure; filter by object and status."""
    # a poll of a cached page is answered on the event loop (two cheap lookups); a page to
    # build, or a whole table, in a thread
    run = _run_row(s, run_id, who)
    key = (run_id, object, status, format, limit, offset)
    if run.status == "done" and format == "json" and (data := st.page_get(key)) is not None:
        return Response(data, media_type="application/json")
    return await run_in_threadpool(
        _results, s, st, run_id, run.status, key, object, status, format, limit, offset
    )


def _results(
    s: Session,
    st: State,
    run_id: uuid.UUID,
    run_status: str,
    key: tuple,
    object: str | None,
    status: str | None,
    format: str,
    limit: int,
    offset: int,
) -> Response:
    """A page of results as JSON (kept if the run is done), or the selection as a table."""
    t = m.results.c
    cond = [t.tool_id == run_id]
    if object is not None:
        cond.append(t.object == object)
    if status is not None:
        cond.append(t.status == status)
    q = select(m.results).where(*cond).order_by(t.frame, t.object)
    if format == "json":
        total = s.scalar(select(func.count()).select_from(m.results).where(*cond)) or 0
        rows = s.execute(q.limit(limit).offset(offset)).all()
        page = {
            "items": [m.result_json(r) for r in rows],
            "total": total,
            "limit": limit,
            "offset": offset,
        }
        data = json.dumps(page, allow_nan=False).encode()
        if run_status == "done":
            st.page_put(key, data)
        return Response(data, media_type="application/json")
    items = [m.from_row(rec.TimeSeriesPhotometryToolResult, r) for r in s.execute(q).all()]
    table = rec.to_table(items, rec.TimeSeriesPhotometryToolResult)
    buf = io.StringIO()
    table.write(buf, format="ascii.ecsv" if format == "ecsv" else "ascii.csv")
    name = f"results_{run_id}.{format}"
    return Response(
        buf.getvalue(),
        media_type=TABLE_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def _product(s: Session, st: State, run_id: uuid.UUID, who: auth.Principal, name: str) -> Path:
    row = _run_row(s, run_id, who)
    path = st.cfg.run_dir(run_id) / "out" / name
    if row.status != "done":
        raise _err(409, f"run {run_id} is {row.status}: {name} is written when it is done")
    if not path.is_file():
        raise _err(404, f"run {run_id} has no {name}")
    return path


@router.get(
    RESOURCE + "/{run_id}/lightcurves/{object}",
    tags=["products"],
    responses={
        **COMMON,
        **R409,
        200: {
            "description": "the light curve table",
            "content": {"text/plain": {}, "text/csv": {}},
        },
    },
    response_class=FileResponse,
)
def get_lightcurve(
    run_id: RunId,
    object: Annotated[str, PathParam(max_length=100, description="target or check star name")],
    who: Who,
    s: DB,
    st: St,
    format: Annotated[Literal["ecsv", "csv"], Query()] = "ecsv",
) -> Any:
    """The differential light curve of one target or check star (ECSV or CSV)."""
    if not NAME_RE.match(object):
        raise _err(404, f"no light curve {object!r}")
    path = _product(s, st, run_id, who, f"lightcurve_{object}.{format}")
    return FileResponse(path, media_type=TABLE_TYPES[format], filename=path.name)


@router.get(
    RESOURCE + "/{run_id}/plots/{name}.png",
    tags=["products"],
    responses={**COMMON, **R409, 200: {"content": {"image/png": {}}, "description": "a figure"}},
    response_class=FileResponse,
)
def get_plot(
    run_id: RunId,
    name: Annotated[str, PathParam(max_length=64, description="lightcurve, conditions, …")],
    who: Who,
    s: DB,
    st: St,
) -> Any:
    """A figure of the run: lightcurve, conditions, finder, noise_budget."""
    if not NAME_RE.match(name):
        raise _err(404, f"no plot {name!r}")
    return FileResponse(_product(s, st, run_id, who, f"{name}.png"), media_type="image/png")


REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


@router.get(
    RESOURCE + "/{run_id}/report.html",
    tags=["products"],
    responses={**COMMON, **R409, 200: {"content": {"text/html": {}}, "description": "report"}},
    response_class=FileResponse,
)
def get_report(run_id: RunId, who: Who, s: DB, st: St) -> Any:
    """The run's one-page report."""
    path = _product(s, st, run_id, who, "report.html")
    return FileResponse(
        path, media_type="text/html; charset=utf-8", headers={"Content-Security-Policy": REPORT_CSP}
    )


@router.get(
    RESOURCE + "/{run_id}/bundle",
    tags=["products"],
    responses={**COMMON, **R409, 200: {"content": {"application/zip": {}}, "description": "zip"}},
    response_class=FileResponse,
)
def get_bundle(
    run_id: RunId,
    who: Who,
    s: DB,
    st: St,
    with_data: Annotated[bool, Query(description="carry the exposures too (larger)")] = False,
) -> Any:
    """The run's stack bundle (settings, masters, products, exposure hashes): `tsphot replay`
    replays it. Written on first request and recorded as a stack file."""
    row = _run_row(s, run_id, who)
    if row.status != "done":
        raise _err(409, f"run {run_id} is {row.status}: its bundle can be made when it is done")
    path = st.cfg.run_dir(run_id) / ("bundle_data.zip" if with_data else "bundle.zip")
    if not path.is_file():
        _make_bundle(s, st, run_id, path, with_data)
    return FileResponse(
        path, media_type="application/zip", filename=f"tsphot-{path.stem}-{run_id}.zip"
    )


def _make_bundle(s: Session, st: State, run_id: uuid.UUID, path: Path, with_data: bool) -> None:
    """Write a bundle once (a file lock keeps concurrent requests, and servers, from writing it
    twice) and record it as the run's stack file."""
    import fcntl

    from tsphot.errors import TsphotError
    from tsphot.products import bundle

    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            return
        try:
            res = bundle.make_bundle(st.cfg.run_dir(run_id) / "out", path, with_data=with_data)
        except TsphotError as exc:
            raise _err(409, f"run {run_id}: the bundle cannot be made: {exc}") from None
        if res.record is not None:
            sf = res.record
            sf.tool_id = run_id
            s.execute(insert(m.stack_files).values(**m.to_row(sf)))
            ids = s.scalar(select(m.tools.c.stack_file_ids).where(m.tools.c.id == run_id)) or []
            s.execute(
                update(m.tools)
                .where(m.tools.c.id == run_id)
                .values(stack_file_ids=[*ids, str(sf.id)])
            )
            s.commit()


# ----------------------------------------------------------------------------- uploads


def _upload_out(u: m.Upload, owner: str, dedup: bool = False) -> sch.UploadOut:
    return sch.UploadOut(
        id=u.id,
        sha256=u.sha256,
        size_bytes=u.size_bytes,
        filename=u.filename,
        created=u.created,
        owner=owner,
        deduplicated=dedup,
    )


def _quota(s: Session, st: State, who: auth.Principal) -> tuple[int, int]:
    """(bytes used, quota) of the caller."""
    used = s.scalar(
        select(func.coalesce(func.sum(m.Upload.size_bytes), 0)).where(m.Upload.owner_id == who.id)
    )
    quota = s.scalar(select(m.User.quota_bytes).where(m.User.id == who.id))
    return int(used or 0), int(quota if quota is not None else st.cfg.quota_bytes)


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            "application/fits": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "/uploads",
    status_code=201,
    response_model=sch.UploadOut,
    tags=["uploads"],
    openapi_extra=UPLOAD_BODY,
    responses={
        **R401,
        200: {"model": sch.UploadOut, "description": "the caller had uploaded these bytes"},
        413: {"model": sch.Message, "description": "over the size limit or the quota"},
        415: {"model": sch.Message, "description": "neither multipart nor application/fits"},
        422: {"description": "not FITS, empty, or a malformed body; the field is named"},
    },
)
async def create_upload(
    request: Request,
    who: Who,
    st: St,
    filename: Annotated[str | None, Query(max_length=255, description="for a raw body")] = None,
) -> Any:
    """Upload one exposure (FITS, or gzip-compressed FITS), streamed to disk."""
    cfg = st.cfg

    def limits() -> tuple[int, str]:
        with st.sm() as s:
            used, quota = _quota(s, st, who)
        room = quota - used
        if room < cfg.max_upload_bytes:
            return max(room, 0), (
                f"upload refused: over your quota ({used / 2**20:.1f} of {quota / 2**20:.1f} MiB "
                "used); delete uploads you no longer need (DELETE /api/v1/uploads/ID)"
            )
        return cfg.max_upload_bytes, (
            f"upload refused: larger than the limit of {cfg.max_upload_bytes / 2**20:.1f} MiB "
            "per file"
        )

    limit, msg = await run_in_threadpool(limits)
    try:
        got = await uploads.receive(request, cfg.uploads_dir / "tmp", limit, msg)
    except uploads.UploadRefused as exc:
        if exc.status == 422:
            raise _field_err(["body", exc.field], exc.message) from None
        raise _err(exc.status, exc.message) from None
    if filename and request.headers.get("content-type", "").startswith("application/"):
        got.filename = uploads.safe_filename(filename)

    def keep() -> tuple[sch.UploadOut, bool]:
        why = uploads.check_fits(got.path)
        if why is not None:
            got.path.unlink(missing_ok=True)
            raise _field_err(["body", "file"], f"{got.filename}: {why}", "not_fits")
        uploads.store_blob(cfg.uploads_dir, got.path, got.sha256)
        with st.sm() as s:
            old = s.scalar(
                select(m.Upload).where(m.Upload.owner_id == who.id, m.Upload.sha256 == got.sha256)
            )
            if old is not None:
                return _upload_out(old, who.name, dedup=True), False
            u = m.Upload(
                owner_id=who.id, sha256=got.sha256, size_bytes=got.size, filename=got.filename
            )
            s.add(u)
            try:
                s.commit()
            except IntegrityError:  # the same bytes arrived twice at once
                s.rollback()
                old = s.scalar(
                    select(m.Upload).where(
                        m.Upload.owner_id == who.id, m.Upload.sha256 == got.sha256
                    )
                )
                return _upload_out(old, who.name, dedup=True), False
            return _upload_out(u, who.name), True

    out, created = await run_in_threadpool(keep)
    if not created:
        return Response(out.model_dump_json(), status_code=200, media_type="application/json")
    return out


@router.get("/uploads", response_model=sch.Page[sch.UploadOut], tags=["uploads"], responses=R401)
def list_uploads(
    who: Who,
    s: DB,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> Any:
    """The caller's uploads (an admin sees all), newest first."""
    cond = [] if who.is_admin else [m.Upload.owner_id == who.id]
    total = s.scalar(select(func.count()).select_from(m.Upload).where(*cond)) or 0
    rows = s.execute(
        select(m.Upload, m.User.name)
        .join(m.User, m.User.id == m.Upload.owner_id)
        .where(*cond)
        .order_by(m.Upload.created.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return sch.Page[sch.UploadOut](
        items=[_upload_out(u, name) for u, name in rows], total=total, limit=limit, offset=offset
    )


def _upload_row(s: Session, upload_id: uuid.UUID, who: auth.Principal) -> tuple[m.Upload, str]:
    q = select(m.Upload, m.User.name).join(m.User, m.User.id == m.Upload.owner_id)
    q = q.where(m.Upload.id == upload_id)
    if not who.is_admin:
        q = q.where(m.Upload.owner_id == who.id)
    row = s.execute(q).first()
    if row is None:
        raise _err(404, f"no upload {upload_id} of yours")
    return row[0], row[1]


@router.get(
    "/uploads/{upload_id}", response_model=sch.UploadOut, tags=["uploads"], responses=COMMON
)
def get_upload(upload_id: uuid.UUID, who: Who, s: DB) -> Any:
    """One upload."""
    u, owner = _upload_row(s, upload_id, who)
    return _upload_out(u, owner)


@router.delete("/uploads/{upload_id}", status_code=204, tags=["uploads"], responses=COMMON)
def delete_upload(upload_id: uuid.UUID, who: Who, s: DB, st: St) -> Response:
    """Delete an upload (runs that used it keep their copy)."""
    u, _ = _upload_row(s, upload_id, who)
    sha = u.sha256
    s.execute(delete(m.Upload).where(m.Upload.id == upload_id))
    s.commit()
    if not s.scalar(select(func.count()).select_from(m.Upload).where(m.Upload.sha256 == sha)):
        uploads.blob_path(st.cfg.uploads_dir, sha).unlink(missing_ok=True)
    return Response(status_code=204)

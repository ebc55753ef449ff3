"""Jobs: runs execute in worker processes, never in a request handler.

The server's dispatcher thread claims pending runs (an atomic pending → running update, so two
servers on one database never take the same run), starts one worker process per run (up to
``--workers`` at once), renews a lease on each while it lives, kills the worker of a cancelled
run, and puts a run whose server died (lease expired, or its server process is gone from this
host) back to pending with ``resume`` set, so it continues from its checkpoint. A worker process
dies with its server (PR_SET_PDEATHSIG), taking its frame-measuring children with it.

A worker (``python -m tsphot.api.jobs``) runs the pipeline, reports progress (frames measured /
total) into the run's row, and at the end writes the run's records (objects, exposure stack,
stack file, results) in one transaction, guarded by its attempt number, so a cancelled or
re-claimed run is never overwritten by a late worker.

``run_pipeline`` and ``settings_for_run`` are the only places that know the pipeline's interface.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import glob
import inspect
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from tsphot import records as rec
from tsphot.api import models as m
from tsphot.api.config import ServerConfig
from tsphot.errors import TsphotError
from tsphot.settings import Settings

log = logging.getLogger("tsphot.api")
HOST = socket.gethostname()


# ----------------------------------------------------------------------------- the pipeline


def settings_for_run(
    cfg: ServerConfig, run_id: uuid.UUID, science: dict[str, Any], inputs: dict[str, list[str]]
) -> Settings:
    """The full Settings of an API run: the client's science settings, the server's files and
    output folder, and the server's choice of executor. Raises pydantic's ValidationError."""
    data = dict(science)
    for key, files in inputs.items():
        data[key] = [glob.escape(f) for f in files]  # the pipeline expands globs; names are names
    data["out"] = str(cfg.run_dir(run_id) / "out")
    data["quiet"] = True
    fields = Settings.model_fields
    if cfg.run_executor is not None and "executor" in fields:
        data["executor"] = cfg.run_executor
    if cfg.run_workers is not None and "workers" in fields:
        data["workers"] = cfg.run_workers
    if cfg.scheduler is not None and "scheduler" in fields:
        data["scheduler"] = cfg.scheduler
    return Settings.model_validate(data)


def run_pipeline(settings: Settings, tool: rec.TimeSeriesPhotometryTool, resume: bool) -> Any:
    """Run the pipeline for a worker; continue from the checkpoint when resuming and the
    pipeline keeps one (``Settings.resume``), otherwise start the run over."""
    from tsphot import pipeline

    if resume and "resume" in Settings.model_fields:
        settings = settings.model_copy(update={"resume": True})
    takes_tool = "tool" in inspect.signature(pipeline.run).parameters
    summary = pipeline.run(settings, **({"tool": tool} if takes_tool else {}))
    out = Path(settings.out)
    if not takes_tool or not (out / "records.json").exists():
        # a pipeline that keeps no record of its own: make it from run.json, under our id
        recs = rec.records_from_run(tool, json.loads((out / "run.json").read_text()), str(out))
        recs.tool.mark_done()
        recs.write(out / "records.json")
    return summary


def _install_progress(report: Any, rejected_file: Path | None = None) -> None:
    """Route the pipeline's per-frame progress to ``report(done, total)`` in this process, and
    the frames rejected so far (with their reasons) to ``rejected_file`` (JSON, for the page)."""
    from tsphot import pipeline
    from tsphot.api.web import write_progress

    if not hasattr(pipeline, "_progress"):
        return

    def progress(total: int, quiet: bool = True, desc: str = "measuring", initial: int = 0, **_):
        if desc != "measuring":
            return lambda r: None
        state = {"done": initial}
        rejected: list[dict[str, Any]] = []
        report(initial, total, force=True)

        def step(r: Any) -> None:
            if r is not None:
                state["done"] += 1
                status = getattr(r, "status", "ok")
                if status != "ok" and rejected_file is not None:
                    path = str(getattr(r, "path", ""))
                    name = Path(path).name
                    rejected.append(
                        {
                            "frame": int(getattr(r, "index", -1)),
                            "file": name,
                            "status": str(status),
                            # the client sees file names, not the server's folders
                            "reason": str(getattr(r, "reason", "")).replace(path, name)
                            if path
                            else str(getattr(r, "reason", "")),
                        }
                    )
                    try:
                        write_progress(rejected_file, rejected)
                    except OSError as exc:  # progress is worth less than the run
                        log.warning("rejected frames not recorded: %s", exc)
            report(state["done"], total, force=r is None)

        return step

    pipeline._progress = progress


# ----------------------------------------------------------------------------- the worker


def _die_with_parent(parent: int) -> None:
    """Get SIGTERM when the server dies; on SIGTERM kill this worker's whole process group."""

    def stop(*_: Any) -> None:
        os.killpg(os.getpgrp(), signal.SIGKILL)

    signal.signal(signal.SIGTERM, stop)
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the lease still hands the run to the next server
        pass
    if os.getppid() != parent:  # the server died before prctl took hold
        stop()


def _guard(run_id: uuid.UUID, attempt: int) -> Any:
    t = m.tools.c
    return (t.id == run_id) & (t.attempt == attempt) & (t.status == "running")


def _reporter(sm: sessionmaker[Session], run_id: uuid.UUID, attempt: int) -> Any:
    last = [0.0]

    def report(done: int, total: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - last[0] < 0.25:
            return
        last[0] = now
        try:
            with sm.begin() as s:
                s.execute(
                    update(m.tools)
                    .where(_guard(run_id, attempt))
                    .values(progress_done=done, progress_total=total)
                )
        except Exception as exc:  # progress is worth less than the run
            log.warning("progress not recorded: %s", exc)

    return report


def _store_results(
    sm: sessionmaker[Session], run_id: uuid.UUID, attempt: int, out: Path, first_started: Any
) -> bool:
    """Write a finished run's records in one transaction; False if the run was taken away."""
    from astropy.table import Table

    recs = rec.RunRecords.read(out / "records.json")
    tool = recs.tool
    results = m.result_rows(Table.read(out / "results.ecsv"), run_id)
    if first_started is not None:
        tool.started = first_started
    with sm.begin() as s:
        row = to_tool_row(tool)
        done = s.execute(
            update(m.tools)
            .where(_guard(run_id, attempt))
            .values(**row, lease_until=None, worker_pid=None)
        ).rowcount
        if not done:
            return False
        for table in (m.results, m.tool_objects, m.exposure_stacks, m.stack_files):
            s.execute(delete(table).where(table.c.tool_id == run_id))
        if recs.objects:
            s.execute(insert(m.tool_objects), [m.to_row(o) for o in recs.objects])
        if recs.stack is not None:
            s.execute(insert(m.exposure_stacks), [m.to_row(recs.stack)])
        if recs.stack_files:
            s.execute(insert(m.stack_files), [m.to_row(f) for f in recs.stack_files])
        for k in range(0, len(results), 5000):
            s.execute(insert(m.results), results[k : k + 5000])
    return True


def to_tool_row(tool: rec.TimeSeriesPhotometryTool) -> dict[str, Any]:
    """The record's columns of a run's row (the service's own columns left alone)."""
    row = m.to_row(tool)
    row.pop("id")
    return row


def worker_main(argv: list[str] | None = None) -> int:
    """Entry point of a worker process: run one claimed run to its end."""
    p = argparse.ArgumentParser(prog="tsphot-worker")
    p.add_argument("--database", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--attempt", type=int, required=True)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--nice", type=int, default=0)
    a = p.parse_args(argv)
    _die_with_parent(a.parent)
    if a.nice > 0:  # the run's frame-measuring children inherit it
        os.nice(a.nice)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from tsphot.api.db import open_database

    _, sm = open_database(a.database, migrate=False)
    run_id = uuid.UUID(a.run)
    with sm() as s:
        row = s.execute(select(m.tools).where(m.tools.c.id == run_id)).first()
    if row is None or row.attempt != a.attempt or row.status != "running":
        log.info("run %s is no longer this worker's (attempt %s)", run_id, a.attempt)
        return 0
    tool = m.from_row(rec.TimeSeriesPhotometryTool, row)
    first_started = row.started
    tool.status = rec.RunStatus.pending
    settings = Settings.model_validate(tool.settings)
    from tsphot.api.web import PROGRESS_FILE

    rejected_file = Path(settings.out).parent / PROGRESS_FILE
    rejected_file.unlink(missing_ok=True)  # a new attempt starts its list over
    _install_progress(_reporter(sm, run_id, a.attempt), rejected_file)
    log.info("run %s attempt %d%s", run_id, a.attempt, " (resuming)" if row.resume else "")
    try:
        run_pipeline(settings, tool, bool(row.resume))
        if not _store_results(sm, run_id, a.attempt, Path(settings.out), first_started):
            log.info("run %s was cancelled or taken over; results not stored", run_id)
        return 0
    except BaseException as exc:
        if isinstance(exc, TsphotError):
            reason = str(exc)
        else:
            log.exception("run %s failed", run_id)
            reason = f"internal error: {type(exc).__name__}: {exc}"
        with sm.begin() as s:
            s.execute(
                update(m.tools)
                .where(_guard(run_id, a.attempt))
                .values(
                    status="failed",
                    reason=reason[:4000] or type(exc).__name__,
                    finished=rec.utcnow(),
                    lease_until=None,
                    worker_pid=None,
                )
            )
        return 1


# ----------------------------------------------------------------------------- the dispatcher


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Dispatcher:
    """Starts, watches, cancels and resumes runs; one per server process, in its own thread."""

    def __init__(self, cfg: ServerConfig, sm: sessionmaker[Session]) -> None:
        self.cfg, self.sm = cfg, sm
        self.server_id = uuid.uuid4().hex
        self.procs: dict[uuid.UUID, tuple[subprocess.Popen, int]] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the dispatcher thread (workers are spawned from it, and die with the server)."""
        self.thread = threading.Thread(target=self._loop, name="tsphot-dispatcher", daemon=True)
        self.thread.start()

    def wake(self) -> None:
        """Look for work now (a run was just created or cancelled)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop: kill the workers and hand their runs back as pending, to resume next start."""
        self._stop.set()
        self._wake.set()
        if self.thread is not None:
            self.thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("dispatcher step failed; trying again")
            self._wake.wait(self.cfg.poll_seconds)
            self._wake.clear()
        self._shutdown()

    def tick(self) -> None:
        """One round: reap, cancel, renew leases, resume orphans, start pending runs."""
        self._reap()
        self._cancel_and_renew()
        self._requeue_orphans()
        self._claim()

    def _now(self) -> dt.datetime:
        return rec.utcnow()

    def _reap(self) -> None:
        for run_id, (proc, attempt) in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.procs[run_id]
            with self.sm.begin() as s:
                s.execute(
                    update(m.tools)
                    .where(_guard(run_id, attempt))
                    .values(
                        status="failed",
                        reason=f"the worker process ended unexpectedly (exit code {code}); "
                        f"its log is {self.cfg.run_dir(run_id) / 'worker.log'}",
                        finished=rec.utcnow(),
                        lease_until=None,
                        worker_pid=None,
                    )
                )

    def _cancel_and_renew(self) -> None:
        if not self.procs:
            return
        t = m.tools.c
        with self.sm.begin() as s:
            rows = s.execute(
                select(t.id, t.status, t.attempt, t.server_id).where(t.id.in_(list(self.procs)))
            ).all()
            state = {r.id: r for r in rows}
            for run_id, (proc, attempt) in list(self.procs.items()):
                r = state.get(run_id)
                if r is None or r.status != "running" or r.attempt != attempt:
                    _kill_group(proc)  # cancelled or deleted: stop measuring now
            s.execute(
                update(m.tools)
                .where(
                    t.id.in_(list(self.procs)), t.status == "running", t.server_id == self.server_id
                )
                .values(lease_until=self._now() + dt.timedelta(seconds=self.cfg.lease_seconds))
            )

    def _requeue_orphans(self) -> None:
        t = m.tools.c
        now = self._now()
        with self.sm.begin() as s:
            rows = s.execute(
                select(t.id, t.server_id, t.server_host, t.server_pid, t.lease_until).where(
                    t.status == "running"
                )
            ).all()
            for r in rows:
                if r.id in self.procs:
                    continue
                gone = r.server_host == HOST and (
                    not _pid_alive(r.server_pid)
                    or (r.server_pid == os.getpid() and r.server_id != self.server_id)
                )
                expired = r.lease_until is None or r.lease_until < now
                if not (gone or expired):
                    continue
                log.warning("run %s lost its server; it will resume from its checkpoint", r.id)
                s.execute(
                    update(m.tools)
                    .where(t.id == r.id, t.status == "running", t.server_id == r.server_id)
                    .values(status="pending", resume=True, lease_until=None, worker_pid=None)
                )

    def _claim(self) -> None:
        free = self.cfg.workers - len(self.procs)
        if free <= 0:
            return
        t = m.tools.c
        with self.sm() as s:
            candidates = s.execute(
                select(t.id).where(t.status == "pending").order_by(t.created).limit(free * 2)
            ).all()
        for (run_id,) in candidates:
            if len(self.procs) >= self.cfg.workers:
                break
            with self.sm.begin() as s:
                row = s.execute(select(t.attempt, t.started).where(t.id == run_id)).first()
                if row is None:
                    continue
                attempt = row.attempt + 1
                taken = s.execute(
                    update(m.tools)
                    .where(t.id == run_id, t.status == "pending")
                    .values(
                        status="running",
                        attempt=attempt,
                        started=row.started or self._now(),
                        lease_until=self._now() + dt.timedelta(seconds=self.cfg.lease_seconds),
                        server_id=self.server_id,
                        server_host=HOST,
                        server_pid=os.getpid(),
                    )
                ).rowcount
            if taken:
                self._spawn(run_id, attempt)

    def _spawn(self, run_id: uuid.UUID, attempt: int) -> None:
        run_dir = self.cfg.run_dir(run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "tsphot.api.jobs",
            "--database",
            self.cfg.url,
            "--data-dir",
            str(self.cfg.data_dir),
            "--run",
            str(run_id),
            "--attempt",
            str(attempt),
            "--parent",
            str(os.getpid()),
            "--nice",
            str(self.cfg.run_nice),
        ]
        with open(run_dir / "worker.log", "ab") as logf:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: cancel kills all its children
                close_fds=True,
            )
        self.procs[run_id] = (proc, attempt)
        with self.sm.begin() as s:
            s.execute(update(m.tools).where(_guard(run_id, attempt)).values(worker_pid=proc.pid))
        log.info("run %s: worker %d started (attempt %d)", run_id, proc.pid, attempt)

    def _shutdown(self) -> None:
        t = m.tools.c
        for run_id, (proc, attempt) in list(self.procs.items()):
            _kill_group(proc)
            try:
                with self.sm.begin() as s:
                    s.execute(
                        update(m.tools)
                        .where(_guard(run_id, attempt))
                        .values(status="pending", resume=True, lease_until=None, worker_pid=None)
                    )
            except Exception:
                log.exception("run %s not handed back; its lease will expire", run_id)
            del self.procs[run_id]
        del t


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


if __name__ == "__main__":
    sys.exit(worker_main())

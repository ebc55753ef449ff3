"""Executors: map a pure, picklable function over items, serially, on a local process pool or on
a Dask cluster (a local one started here, or an existing one given by its scheduler address).

Every executor calls the same function on the same inputs, so all give identical results; they
differ only in where the work runs. Results come back as they finish, tagged with the item's
position, so the caller can checkpoint each one at once and order them itself.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, TypeVar

from tsphot.errors import SettingsError

T = TypeVar("T")
R = TypeVar("R")

EXECUTORS = ("serial", "processes", "dask")


def default_workers() -> int:
    """Number of cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def can_fork() -> bool:
    """True where fork exists and this process runs no other thread (forking a threaded
    process can deadlock: a lock another thread holds stays held in the child)."""
    return "fork" in mp.get_all_start_methods() and threading.active_count() == 1


def forked_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int, chunksize: int = 1
) -> list[R]:
    """[fn(x) for x in items] (the same results in the same order), shared by up to `workers`
    forked processes when forking is safe, else one after the other. Forked children see the
    parent's objects without pickling them; fn must be a module-level function."""
    items = list(items)
    if workers <= 1 or len(items) < 2 or not can_fork():
        return [fn(x) for x in items]
    ctx = mp.get_context("fork")
    with ProcessPoolExecutor(min(workers, len(items)), mp_context=ctx) as pool:
        return list(pool.map(fn, items, chunksize=chunksize))


def _start_method() -> str:
    """fork when the parent has one thread (fast, and no re-import of the user's script);
    otherwise forkserver, since forking a threaded process can deadlock."""
    if can_fork():
        return "fork"
    methods = mp.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


def _run_chunk(
    fn: Callable[..., R], chunk: list[tuple[int, T]], args: tuple
) -> list[tuple[int, R]]:
    """Worker side: fn over a few items, each result tagged with its item's position."""
    return [(i, fn(item, *args)) for i, item in chunk]


def check_executor(executor: str, scheduler: str | None = None) -> None:
    """Raise SettingsError, before any work, when an executor cannot be used here."""
    if scheduler is not None:
        executor = "dask"
    if executor not in EXECUTORS:
        raise SettingsError(f"executor {executor!r}: use one of {', '.join(EXECUTORS)}")
    if executor == "dask":
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise SettingsError(
                "executor 'dask' needs dask.distributed, which is not installed: "
                "pip install 'tsphot[dask]' (or use --executor processes)"
            ) from None


DASK_CONNECT_TIMEOUT_S = 20.0


class Executor:
    """Where the map step runs. Open it (``with``) before any work: a Dask cluster is started or
    connected to then, so an unreachable scheduler stops the run before anything is measured."""

    def __init__(
        self, kind: str = "processes", workers: int | None = None, scheduler: str | None = None
    ) -> None:
        check_executor(kind, scheduler)
        self.kind = "dask" if scheduler is not None else kind
        self.workers = workers
        self.scheduler = scheduler
        self._client: Any = None
        self._cluster: Any = None

    def __enter__(self) -> Executor:
        if self.kind == "dask":
            self._open_dask()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the Dask client and any local cluster started here."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def _open_dask(self) -> None:
        from distributed import Client, LocalCluster

        if self.scheduler is None:
            self._cluster = LocalCluster(
                n_workers=self.workers or default_workers(),
                threads_per_worker=1,  # the work is numpy and C: one frame per core
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
            self._client = Client(self._cluster)
            return
        try:
            self._client = Client(self.scheduler, timeout=DASK_CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise SettingsError(
                f"Dask scheduler {self.scheduler}: cannot connect ({exc}); check the address "
                "(tcp://HOST:PORT) and that the scheduler and its workers are running"
            ) from None

    def map_completed(
        self, fn: Callable[..., R], items: Iterable[T], *args: Any
    ) -> Iterator[tuple[int, R]]:
        """Yield (position, fn(item, *args)) for each item as it finishes."""
        items = list(items)
        if self.kind == "dask":
            if self._client is None:
                with self:
                    yield from self._map_dask(fn, items, args)
            else:
                yield from self._map_dask(fn, items, args)
            return
        workers = self.workers or default_workers()
        if self.kind == "serial" or workers == 1 or len(items) <= 1:
            for i, item in enumerate(items):
                yield i, fn(item, *args)
            return
        # Small chunks: cheap to send, and each finished frame reaches the checkpoint soon.
        size = max(1, min(4, len(items) // (8 * workers)))
        tagged = list(enumerate(items))
        chunks = [tagged[k : k + size] for k in range(0, len(tagged), size)]
        ctx = mp.get_context(_start_method())
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            pending = {pool.submit(_run_chunk, fn, c, args) for c in chunks}
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        yield from fut.result()
            finally:
                for fut in pending:
                    fut.cancel()

    def _map_dask(
        self, fn: Callable[..., R], items: list[T], args: tuple
    ) -> Iterator[tuple[int, R]]:
        from distributed import as_completed

        client = self._client
        # The shared arguments (the plan) go to every worker once, not with every item.
        shared = tuple(client.scatter(a, broadcast=True) for a in args)
        futures = client.map(
            _run_chunk,
            [fn] * len(items),
            [[(i, item)] for i, item in enumerate(items)],
            [shared] * len(items),
            pure=False,
        )
        try:
            for fut in as_completed(futures):
                yield from fut.result()
                fut.release()
        finally:
            client.cancel([f for f in futures if not f.done()])


def map_completed(
    fn: Callable[..., R],
    items: Iterable[T],
    *args: Any,
    executor: str = "processes",
    workers: int | None = None,
    scheduler: str | None = None,
) -> Iterator[tuple[int, R]]:
    """Yield (position, fn(item, *args)) for each item as it finishes, on the chosen executor."""
    with Executor(executor, workers, scheduler) as ex:
        yield from ex.map_completed(fn, items, *args)


def map_ordered(
    fn: Callable[..., R],
    items: Iterable[T],
    *args: Any,
    executor: str = "processes",
    workers: int | None = None,
    scheduler: str | None = None,
) -> Iterator[R]:
    """Yield fn(item, *args) for each item, in input order, on the chosen executor."""
    items = list(items)
    held: dict[int, R] = {}
    nxt = 0
    for i, r in map_completed(
        fn, items, *args, executor=executor, workers=workers, scheduler=scheduler
    ):
        held[i] = r
        while nxt in held:
            yield held.pop(nxt)
            nxt += 1

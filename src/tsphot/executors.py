"""Executors: map a pure, picklable function over items, serially or on a local process pool."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """Number of cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _start_method() -> str:
    """fork when the parent has one thread (fast, and no re-import of the user's script);
    otherwise forkserver, since forking a threaded process can deadlock."""
    methods = mp.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def map_ordered(
    fn: Callable[..., R],
    items: Iterable[T],
    *args: Any,
    executor: str = "processes",
    workers: int | None = None,
) -> Iterator[R]:
    """Yield fn(item, *args) for each item, in input order, on the chosen executor."""
    items = list(items)
    workers = workers or default_workers()
    if executor == "serial" or workers == 1 or len(items) <= 1:
        for item in items:
            yield fn(item, *args)
        return
    if executor != "processes":
        raise ValueError(f"unknown executor {executor!r} (serial or processes)")
    ctx = mp.get_context(_start_method())
    chunk = max(1, min(8, len(items) // (4 * workers)))
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        yield from pool.map(fn, items, *[[a] * len(items) for a in args], chunksize=chunk)

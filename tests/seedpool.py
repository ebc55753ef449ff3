"""Independent trials (one per seed) in two forked processes: CI has two cores, pytest uses one.

The trials are deterministic functions of their seed, so the results are those of a plain loop
(in the same order). A parent with other threads running maps serially: forking a threaded
process can deadlock.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")
WORKERS = 2


def map_seeds(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """[fn(x) for x in items], the calls shared by two forked processes where possible."""
    items = list(items)
    forkable = "fork" in mp.get_all_start_methods() and threading.active_count() == 1
    if not forkable or len(items) < 2:
        return [fn(x) for x in items]
    with ProcessPoolExecutor(WORKERS, mp_context=mp.get_context("fork")) as pool:
        return list(pool.map(fn, items))

"""Independent trials (one per seed) in two forked processes: CI has two cores, pytest uses one.

The trials are deterministic functions of their seed, so the results are those of a plain loop
(in the same order). A parent with other threads running maps serially: forking a threaded
process can deadlock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from tsphot import executors

T = TypeVar("T")
R = TypeVar("R")
WORKERS = 2


def map_seeds(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """[fn(x) for x in items], the calls shared by two forked processes where possible."""
    return executors.forked_map(fn, items, WORKERS)

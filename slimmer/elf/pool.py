"""Run a function over many files in worker processes, with memory bounded by file size.

LIEF and strip hold a whole file in memory, so the number of workers alone does not bound memory:
one 1.5 GB library costs more than a thousand small ones. `bounded_map` starts a task only while
the costs (file sizes) of the tasks in flight stay under a budget; a task larger than the budget
runs alone. Workers are forked from a small server process (`forkserver`), not from the caller,
so they do not inherit a large plan.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

T = TypeVar("T")
R = TypeVar("R")

MiB = 1 << 20
FLOOR = 16 * MiB  # the budget when every file is small
TASK_OVERHEAD = 64 * MiB  # what a busy worker holds beside the file: LIEF's structures, strip's buffers
SERIAL_BELOW = 16 * MiB  # less work than this in total: no pool, its start costs more


def release_memory() -> None:
    """Free LIEF's objects and give the heap back to the system, so a worker that parsed a large
    file does not keep its pages while it runs the next task (or a strip)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _call(fn: Callable[[T], R], item: T) -> R:
    try:
        return fn(item)
    finally:
        release_memory()


def default_jobs() -> int:
    env = os.environ.get("SLIMMER_JOBS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_budget(costs: Sequence[int]) -> int:
    """The largest cost: tasks in flight together never take more than the largest one alone.

    A cost includes TASK_OVERHEAD, so two files run side by side only if their sizes add up to
    the largest file minus that overhead. The whole run then peaks near the largest file plus
    the fixed cost of the processes (about 60 MB per worker for Python and LIEF, 40 MB for the
    caller), whatever the number and sizes of the files.
    """
    return max(max(costs, default=0), FLOOR)


def bounded_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    cost: Callable[[T], int],
    jobs: int | None = None,
    budget: int | None = None,
    overhead: int = TASK_OVERHEAD,
) -> Iterator[tuple[T, R]]:
    """Yield (item, fn(item)) as each finishes, largest first; `fn` must be a module-level function.

    A task costs `cost(item) + overhead`; tasks start while the costs in flight stay within `budget`.
    """
    order = sorted(items, key=cost, reverse=True)
    costs = [cost(i) + overhead for i in order]
    jobs = jobs or default_jobs()
    if jobs == 1 or len(order) <= 1 or sum(costs) - overhead * len(costs) < SERIAL_BELOW:
        for item in order:
            yield item, fn(item)
        return
    budget = budget if budget is not None else default_budget(costs)
    context = multiprocessing.get_context("forkserver")
    pending = list(zip(order, costs))
    running: dict[Future[R], tuple[T, int]] = {}
    in_flight = 0
    with ProcessPoolExecutor(max_workers=min(jobs, len(order)), mp_context=context) as pool:
        while pending or running:
            while pending and len(running) < jobs:
                # The largest pending task that fits; a task over budget waits until nothing runs.
                pick = next((k for k, (_, c) in enumerate(pending) if in_flight + c <= budget), None)
                if pick is None:
                    if running:
                        break
                    pick = 0
                item, c = pending.pop(pick)
                running[pool.submit(_call, fn, item)] = (item, c)
                in_flight += c
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                item, c = running.pop(future)
                in_flight -= c
                yield item, future.result()

"""Run a function over many files in worker processes, with memory bounded by file size.

LIEF and strip hold a whole file in memory, so the number of workers alone does not bound memory:
one 1.5 GB library costs more than a thousand small ones. `bounded_map` starts a task only while
the costs (file sizes) of the tasks in flight stay under a budget; a task larger than the budget
runs alone. Workers are forked from a small server process (`forkserver`), not from the caller,
so they do not inherit a large plan. That server imports LIEF once before it forks any worker
(`slimmer.elf.preload`): the workers share those pages instead of holding 45 MB each.

A command that uses workers more than once (`slimmer apply`: analysis while planning, strip while
applying) opens one `shared_pool` at its start: its workers start while the caller walks the
tree, and the caller passes the pool to the plan, its protectors and the rewriters, whose every
`bounded_map(..., pool=pool)` reuses them (one map at a time, so the budget holds). Nothing is global:
a map that is given no pool makes its own.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import select
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from concurrent.futures import Executor

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
    the fixed cost of the processes (with LIEF 1.0: the forkserver and its workers about 70 MB
    together, as they share LIEF's pages; the caller 40 to 60 MB), whatever the number and sizes
    of the files. What a job starts beside the file it holds (a library loaded with its
    dependencies) is not measured by its size: `slimmer.elf.rewrite.run_jobs` runs that after the map.
    """
    return max(max(costs, default=0), FLOOR)


PRELOAD = ("__main__", "slimmer.elf.preload")  # what the forkserver imports before it forks a worker


def _context() -> multiprocessing.context.ForkServerContext:
    """The forkserver context, its server told to import LIEF once for all workers (`slimmer.elf.preload`).
    The list applies when the server starts (the first pool of the process)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    return context


def _exit_with(pid: int) -> None:
    """Worker initializer: exit as soon as process `pid` (the slimmer that made the pool) is gone.

    A worker's parent is the forkserver, which itself stays as long as any worker does, so a
    `kill -9` of slimmer would leave both behind, a busy worker until its task ends. A daemon thread
    waits on a pidfd of slimmer (or polls where pidfds do not exist) and ends the worker."""

    def watch() -> None:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            os._exit(1)
        except (AttributeError, OSError):
            while True:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    os._exit(1)
                except PermissionError:
                    pass
                time.sleep(1.0)
        select.select([fd], [], [])
        os._exit(1)

    threading.Thread(target=watch, name="slimmer-parent-watch", daemon=True).start()


def _import_lief(parent: int) -> None:
    """Worker initializer: exit with slimmer; have LIEF loaded before the first task (the forkserver
    imported it already unless its preload failed; then the worker pays for it here)."""
    _exit_with(parent)
    with contextlib.suppress(ImportError):
        import lief  # noqa: F401


def _nothing() -> None:
    return None


class WorkerPool:
    """Worker processes that live for a whole command, started at once in the background.

    The workers (forked from the forkserver, so small) find LIEF imported there. Starting them
    goes through a thread, so the caller never waits for the forkserver. `lock` lets one
    `bounded_map` at a time use the pool: the memory budget is per map.
    """

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.lock = threading.Lock()
        self.executor = ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=_context(),
            initializer=_import_lief,
            initargs=(os.getpid(),),
        )
        self._starter = threading.Thread(target=self._start, name="slimmer-pool-start", daemon=True)
        self._starter.start()

    def _start(self) -> None:
        # One submit per worker: each finds no idle worker yet and starts one.
        with contextlib.suppress(Exception):  # a pool that cannot start fails later, where it is used
            wait([self.executor.submit(_nothing) for _ in range(self.jobs)])

    def close(self) -> None:
        self._starter.join()
        self.executor.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def shared_pool(jobs: int | None = None) -> Iterator[WorkerPool | None]:
    """Start the workers now, for every `bounded_map` it is passed to until the end of the block.
    With one job there is no pool (None): maps run in the calling process, as before."""
    jobs = jobs or default_jobs()
    if jobs == 1:
        yield None
        return
    pool = WorkerPool(jobs)
    try:
        yield pool
    finally:
        pool.close()


def bounded_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    cost: Callable[[T], int],
    jobs: int | None = None,
    budget: int | None = None,
    overhead: int = TASK_OVERHEAD,
    pool: WorkerPool | None = None,
) -> Iterator[tuple[T, R]]:
    """Yield (item, fn(item)) as each finishes, largest first; `fn` must be a module-level function.

    A task costs `cost(item) + overhead`; tasks start while the costs in flight stay within `budget`.
    `pool`: warm workers to use (when `jobs` is not given or is the pool's); else a map makes its own.
    """
    order = sorted(items, key=cost, reverse=True)
    costs = [cost(i) + overhead for i in order]
    shared = pool if pool is not None and jobs in (None, pool.jobs) else None
    jobs = shared.jobs if shared is not None else jobs or default_jobs()
    small = len(order) <= 1 or sum(costs) - overhead * len(costs) < SERIAL_BELOW
    if not order or jobs == 1 or (small and shared is None):  # warm workers are cheaper than LIEF here
        for item in order:
            yield item, fn(item)
        return
    budget = budget if budget is not None else default_budget(costs)
    pending = list(zip(order, costs))
    running: dict[Future[R], tuple[T, int]] = {}
    in_flight = 0
    if shared is not None:
        pool_cm: contextlib.AbstractContextManager[Executor] = contextlib.nullcontext(shared.executor)
        lock: contextlib.AbstractContextManager[object] = shared.lock
    else:
        context = _context()
        pool_cm = ProcessPoolExecutor(
            max_workers=min(jobs, len(order)), mp_context=context, initializer=_exit_with, initargs=(os.getpid(),)
        )
        lock = contextlib.nullcontext()
    with lock, pool_cm as executor:
        while pending or running:
            while pending and len(running) < jobs:
                # The largest pending task that fits; a task over budget waits until nothing runs.
                pick = next((k for k, (_, c) in enumerate(pending) if in_flight + c <= budget), None)
                if pick is None:
                    if running:
                        break
                    pick = 0
                item, c = pending.pop(pick)
                running[executor.submit(_call, fn, item)] = (item, c)
                in_flight += c
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                item, c = running.pop(future)
                in_flight -= c
                yield item, future.result()

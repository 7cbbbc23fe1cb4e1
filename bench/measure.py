"""Measures for the benchmark: the bytes and files of a tree, its largest ELF file, and one timed command.

Reads trees and /proc; never changes anything it measures.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

TIME = "/usr/bin/time"
ELF_MAGIC = b"\x7fELF"


@dataclass(frozen=True)
class TreeCount:
    """What a tree holds. Each regular-file inode is counted once (hard links are one file);
    symlinks and folders are not counted; nothing is read through a link or on another file system."""

    bytes: int  # apparent size (st_size), as `du --apparent-size` per inode
    files: int  # regular-file inodes
    disk_bytes: int  # allocated blocks (st_blocks * 512)


def count_tree(root: Path) -> TreeCount:
    root_dev = os.lstat(root).st_dev
    seen: set[tuple[int, int]] = set()
    size = blocks = 0
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    if st.st_dev == root_dev:
                        stack.append(entry.path)
                elif stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    size += st.st_size
                    blocks += st.st_blocks * 512
    return TreeCount(bytes=size, files=len(seen), disk_bytes=blocks)


def largest_elf(root: Path) -> tuple[str, int]:
    """The largest regular file under root that starts with the ELF magic: (relative path, bytes)."""
    best = ("", 0)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_size <= best[1]:
                continue
            try:
                with open(path, "rb") as f:
                    is_elf = f.read(4) == ELF_MAGIC
            except OSError:
                continue
            if is_elf:
                best = (os.path.relpath(path, root), st.st_size)
    return best


def say(msg: str) -> None:
    """A progress line of the benchmark, on stderr at once."""
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Check:
    status: str  # ok, FAIL or n/a
    seconds: float = 0.0
    error: str = ""


def check_result(name: str, returncode: int, stdout: str, stderr: str) -> Check:
    """One `fixtures/smoke.py NAME` run read back: its "ok NAME  1.23 s" or "FAIL NAME ... error" line."""
    line = next((ln for ln in stdout.splitlines() if name in ln), "")
    if returncode == 0:
        return Check("ok", float(line.split()[-2]) if line.startswith("ok") else 0.0)
    last = (stderr.strip().splitlines() or ["no output"])[-1]
    error = line.split(" s  ", 1)[-1] if line.startswith("FAIL") else f"exit {returncode}: {last}"
    return Check("FAIL", 0.0, error[:300])


@dataclass(frozen=True)
class TimedRun:
    returncode: int
    wall_s: float  # the command alone: from start to exit, measured here
    max_rss_kb: int  # /usr/bin/time -v: the largest single process of the command
    tree_peak_kb: int  # sampled: the largest sum of PSS over all processes of the command at once


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        ppid = int(data.rpartition(b")")[2].split()[1])
        children.setdefault(ppid, []).append(int(name))
    return children


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _tree_pss_kb(pid: int) -> int:
    children = _children_map()
    total, todo = 0, list(children.get(pid, []))
    while todo:
        child = todo.pop()
        total += _pss_kb(child)
        todo.extend(children.get(child, []))
    return total


def timed_run(
    cmd: list[str], *, log: Path, cwd: Path | None = None, env: dict[str, str] | None = None, interval: float = 0.1
) -> TimedRun:
    """Run cmd under `/usr/bin/time -v` with its output in log; sample its process tree's memory meanwhile.

    The sampler scans /proc every `interval` seconds (about 2 ms a scan), the same for every command."""
    if not os.access(TIME, os.X_OK):
        msg = f"{TIME} is missing: install the 'time' package (make bench does)"
        raise RuntimeError(msg)
    time_file = log.with_suffix(".time")
    peak = 0
    with log.open("wb") as out:
        start = time.monotonic()
        proc = subprocess.Popen([TIME, "-v", "-o", str(time_file), *cmd], stdout=out, stderr=out, cwd=cwd, env=env)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(interval):
                peak = max(peak, _tree_pss_kb(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        proc.wait()
        wall = time.monotonic() - start
        done.set()
        sampler.join()
    # time exits with the command's status (128 + N when a signal N killed it)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_file.read_text(errors="replace"))
    max_rss = int(rss.group(1)) if rss else 0
    return TimedRun(returncode=proc.returncode, wall_s=wall, max_rss_kb=max_rss, tree_peak_kb=max(peak, max_rss))

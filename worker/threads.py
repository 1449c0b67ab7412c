"""Size torch's, onnxruntime's and OpenCV's thread pools from the CPUs the container may use.

Each library sizes its pool from the host's core count: on a 128-core GPU host a container
limited to 8 CPUs (a cgroup quota) would run 128 threads per pool, which then fight over those
8 CPUs (context switches, cache thrash) in every CPU stage: pose, parsing, image resizing.
The CPUs a process may really use are the smallest of its affinity mask and its cgroup CPU
quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), rounded up.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota (in CPUs, e.g. 2.5) of this process's cgroup, or None when unlimited or unknown."""
    quotas = [quota for quota in map(_read_quota, _quota_files(root, proc_cgroup)) if quota is not None]
    return min(quotas) if quotas else None


def container_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """How many CPUs this process may use: affinity mask and cgroup quota, at least 1."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        affinity = os.cpu_count() or 1
    quota = cgroup_cpu_quota(root, proc_cgroup)
    limit = math.ceil(quota) if quota is not None else affinity
    return max(1, min(affinity, limit))


class LazyPool:
    """A thread pool for the whole process, made on first use and kept (a job must not pay for
    starting threads), sized then by `threads()` (from `container_cpus`, not the host's cores).
    Calling it returns the pool."""

    def __init__(self, prefix: str, threads: Callable[[], int] = container_cpus) -> None:
        self.prefix = prefix
        self.threads = threads
        self.pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __call__(self) -> ThreadPoolExecutor:
        with self._lock:
            if self.pool is None:
                self.pool = ThreadPoolExecutor(max_workers=self.threads(), thread_name_prefix=self.prefix)
            return self.pool


def size_thread_pools(cpus: int | None = None) -> int:
    """Size torch's and OpenCV's pools for `cpus` (default: `container_cpus()`) and log it.

    onnxruntime sizes each session's pool when the session is made: the preprocessor is
    given the same number (`worker.runtime`). Call this once at start-up, before any model
    runs (torch fixes its inter-op pool at the first parallel operation).
    """
    import cv2
    import torch

    cpus = cpus or container_cpus()
    torch.set_num_threads(cpus)
    with contextlib.suppress(RuntimeError):  # already fixed by earlier parallel work in this process
        torch.set_num_interop_threads(cpus)
    cv2.setNumThreads(cpus)
    quota = cgroup_cpu_quota()
    log.info(
        "thread pools sized for %d CPU(s) (host cores %s, cgroup quota %s): torch %d intra-op / %d inter-op, "
        "OpenCV %d, onnxruntime %d per session",
        cpus,
        os.cpu_count(),
        "none" if quota is None else f"{quota:g}",
        torch.get_num_threads(),
        torch.get_num_interop_threads(),
        cv2.getNumThreads(),
        cpus,
    )
    return cpus


def _quota_files(root: Path, proc_cgroup: Path) -> list[Path]:
    """cgroup v2 and v1 quota files for this process's cgroup and the (namespaced) root."""
    paths = {"/"}
    try:
        for line in proc_cgroup.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers in ("", "cpu", "cpu,cpuacct", "cpuacct,cpu"):
                paths.add(path or "/")
    except (OSError, ValueError):
        pass
    files = []
    for path in sorted(paths):
        relative = path.lstrip("/")
        files.append(root / relative / "cpu.max")
        for v1 in ("cpu", "cpu,cpuacct"):
            files.append(root / v1 / relative / "cpu.cfs_quota_us")
    return files


def _read_quota(path: Path) -> float | None:
    """CPUs allowed by one quota file; None for "max", -1, a missing or unreadable file."""
    try:
        if path.name == "cpu.max":
            quota, period = path.read_text().split()[:2]
        else:
            quota = path.read_text().strip()
            period = (path.parent / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1") or int(period) <= 0:
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        return None

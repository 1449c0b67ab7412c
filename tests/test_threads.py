"""Thread pools sized from the CPUs the container may use (cgroup quota), not the host's cores.

The cgroup files are real files in a folder laid out like /sys/fs/cgroup (v2 and v1), read by
the same code that reads the real ones; the pools are sized in a fresh interpreter, where torch
has not fixed them yet.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from preprocess.parsing import HumanParser
from worker.threads import cgroup_cpu_quota, container_cpus

REPO = Path(__file__).resolve().parent.parent
AFFINITY = len(os.sched_getaffinity(0))


def cgroup_tree(tmp_path: Path, files: dict[str, str], own: str = "0::/") -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(own + "\n")
    return root, proc


@pytest.mark.parametrize(
    ("files", "own", "quota"),
    [
        ({"cpu.max": "250000 100000\n"}, "0::/", 2.5),  # cgroup v2, as in a container
        ({"cpu.max": "max 100000\n"}, "0::/", None),  # v2 without a limit
        ({"cpu/cpu.cfs_quota_us": "150000", "cpu/cpu.cfs_period_us": "100000"}, "1:cpu:/", 1.5),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, "1:cpu:/", None),
        ({"pod/job/cpu.max": "100000 100000", "cpu.max": "max 100000"}, "0::/pod/job", 1.0),  # own cgroup
        ({}, "0::/", None),  # no cgroup files at all
    ],
)
def test_cgroup_quota_v1_and_v2(tmp_path, files, own, quota):
    root, proc = cgroup_tree(tmp_path, files, own)
    assert cgroup_cpu_quota(root, proc) == quota


def test_container_cpus_is_the_smaller_of_quota_and_affinity(tmp_path):
    root, proc = cgroup_tree(tmp_path, {"cpu.max": "50000 100000"})  # half a CPU: one thread
    assert container_cpus(root, proc) == 1
    root, proc = cgroup_tree(tmp_path / "big", {"cpu.max": f"{(AFFINITY + 8) * 100000} 100000"})
    assert container_cpus(root, proc) == AFFINITY
    root, proc = cgroup_tree(tmp_path / "none", {})
    assert container_cpus(root, proc) == AFFINITY


def test_pools_are_sized_and_logged_in_a_fresh_process():
    code = (
        "import logging, torch, cv2\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from worker.threads import size_thread_pools\n"
        "size_thread_pools(1)\n"
        "print('pools', torch.get_num_threads(), torch.get_num_interop_threads(), cv2.getNumThreads())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pools 1 1 1" in done.stdout
    assert "thread pools sized for 1 CPU(s)" in done.stderr


def test_parsing_sessions_take_the_thread_count(tiny_root):
    parser = HumanParser.from_checkpoints(tiny_root, providers=["CPUExecutionProvider"], threads=1)
    for session in (parser.atr_session, parser.lip_session):
        assert session.get_session_options().intra_op_num_threads == 1

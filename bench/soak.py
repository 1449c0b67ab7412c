"""Soak: many jobs through the SDK's local API server in its own process; does the worker stay flat?

`python -m bench.soak [--jobs 200]` starts `python handler.py --rp_serve_api` on the tiny
checkpoints (generated into a temporary folder unless `--checkpoints` names a tree), a loopback
file server for URL inputs and a SeaweedFS S3 server (the one the tests use), then sends jobs to
`/runsync` one after the other: valid and invalid ones, URL and base64 inputs, the house model,
1 to 4 samples, every result uploaded to the bucket. It samples the worker
process's resident memory, open file descriptors and threads (from /proc) every `--every` jobs.

It fails (exit status 1) when, measured from the sample after the first `--warmup` jobs (by then
every kind of job has run once and the lazily created thread pools exist), resident memory grows
more than 5 % or descriptors or threads grow at all, or when a job's outcome is not the expected
one. The tests run a 30-job version (tests/test_soak.py). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the worker and loopback file server launchers, SeaweedFS

from s3_server import start_seaweedfs  # noqa: E402
from worker_support import ApiWorker, FileServer, api_worker, image_bytes, served_worker_env  # noqa: E402

from storage.s3 import MAX_PARALLEL_UPLOADS  # noqa: E402

MAX_RSS_GROWTH = 0.05
SMALL = {"resolution": "256x192", "steps": 1, "guidance_scale": 1.0}


@dataclass
class Sample:
    """The worker process after `jobs` jobs."""

    jobs: int
    seconds: float
    rss_mb: float
    fds: int  # open descriptors other than the S3 client's pooled connections
    threads: int
    s3_connections: int = 0  # the S3 client's pool: bounded by MAX_PARALLEL_UPLOADS, not by the warm-up


def process_sample(pid: int, jobs: int, started: float, s3_port: int = 0, reads: int = 5) -> Sample:
    """The process now; descriptors and threads are the fewest seen over `reads` reads 0.2 s apart.

    A thread or socket that a finished job is still closing when the answer arrives is not
    growth; one that stays is seen in every read.
    """
    samples = [_read_process(pid, jobs, started, s3_port)]
    for _ in range(reads - 1):
        time.sleep(0.2)
        samples.append(_read_process(pid, jobs, started, s3_port))
    last = samples[-1]
    last.fds = min(sample.fds for sample in samples)
    last.threads = min(sample.threads for sample in samples)
    return last


def _read_process(pid: int, jobs: int, started: float, s3_port: int) -> Sample:
    status = Path(f"/proc/{pid}/status").read_text()
    descriptors = [_link(Path(f"/proc/{pid}/fd") / name) for name in os.listdir(f"/proc/{pid}/fd")]
    sockets = {link[8:-1] for link in descriptors if link.startswith("socket:[")}
    s3_connections = sum(inode in sockets for inode in _tcp_inodes_to_port(pid, s3_port))
    values = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kb = int(values["VmRSS"].split()[0])
    return Sample(
        jobs=jobs,
        seconds=time.monotonic() - started,
        rss_mb=rss_kb / 1024,
        fds=len(descriptors) - s3_connections,
        threads=int(values["Threads"]),
        s3_connections=s3_connections,
    )


def _link(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:  # closed between listing and reading
        return ""


def _tcp_inodes_to_port(pid: int, port: int) -> list[str]:
    """Socket inodes of the process's TCP connections whose remote port is `port`."""
    inodes = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if port and int(fields[2].rsplit(":", 1)[1], 16) == port:
                inodes.append(fields[9])
    return inodes


@dataclass
class JobPlan:
    """One job to send and what must come back."""

    input: dict
    expect: str  # "bucket" (every image a URL) or "error"
    samples: int = 1


@dataclass
class SoakResult:
    jobs: int
    seconds: float
    samples: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def jobs_per_second(self) -> float:
        return self.jobs / self.seconds if self.seconds else 0.0


def plan_jobs(count: int, files: FileServer) -> list[JobPlan]:
    """A repeating mix of 8 kinds, all within the first 8 jobs (before the baseline sample).

    Most valid jobs bring their own mask (as callers may), which spares the pose and parsing
    networks and keeps a job short on CPU; one kind in eight runs them. The SDK's local API
    passes only `input` on, not `s3Config`: the bucket comes from the worker's environment.
    """
    person_url = files.add("/person.jpg", image_bytes((120, 160), "JPEG"))
    garment_url = files.add("/garment.png", image_bytes((60, 80), seed=2))
    garment_b64 = base64.b64encode(image_bytes((60, 80), seed=4)).decode()
    mask = base64.b64encode(image_bytes((96, 128), mode="L")).decode()
    house = {"person_index": 0}
    kinds = [
        JobPlan({"person": person_url, "garment": garment_url, "mask": mask, **SMALL}, "bucket", 1),
        JobPlan({**house, "garment": garment_b64, "mask": mask, "samples": 2, **SMALL}, "bucket", 2),
        JobPlan({"person_index": 0, "garment": "ftp://example.com/g.png"}, "error"),
        JobPlan({"person": person_url, "garment": garment_b64, "output_format": "jpeg", **SMALL},
                "bucket", 1),
        JobPlan({"person_index": 0, "garment": files.url("/missing.png"), **SMALL}, "error"),
        JobPlan({"person_index": 0, "garment": garment_url, "mask": mask, "samples": 4, "return_mask": True,
                 **SMALL}, "bucket", 4),
        JobPlan({"person_index": 0, "garment": garment_b64, "steps": 0}, "error"),
        JobPlan({"person_index": 0, "garment": garment_url, "mask": mask, "model_type": "dc",
                 "category": "lower_body", "samples": 3, "output_format": "webp", **SMALL}, "bucket", 3),
    ]  # fmt: skip
    return [kinds[index % len(kinds)] for index in range(count)]


def check_outcome(plan: JobPlan, status: int, body: dict) -> str | None:
    """Why this job's answer is wrong, or None."""
    if status != 200:
        return f"HTTP {status}"
    if plan.expect == "error":
        return None if body.get("status") == "FAILED" and body.get("error") else f"expected an error: {body}"
    if body.get("status") != "COMPLETED":
        return f"expected success: {str(body)[:300]}"
    images = body["output"]["images"]
    if len(images) != plan.samples:
        return f"expected {plan.samples} images, got {len(images)}"
    if "warnings" in body["output"]:
        return f"warnings: {body['output']['warnings']}"
    if not all("url" in image for image in images):
        return "expected every image uploaded"
    return None


def run_soak(
    worker: ApiWorker, plans: list[JobPlan], every: int, warmup: int, s3_port: int = 0
) -> SoakResult:
    """Send the jobs one after the other, sampling the worker process as it goes."""
    pid = worker.process.pid
    started = time.monotonic()
    result = SoakResult(jobs=len(plans), seconds=0.0)
    result.samples.append(process_sample(pid, 0, started, s3_port))
    for number, plan in enumerate(plans, start=1):
        status, body = worker.post("/runsync", {"input": plan.input})
        problem = check_outcome(plan, status, body)
        if problem:
            result.problems.append(f"job {number} ({plan.expect}): {problem}")
        if number % every == 0 or number in (warmup, len(plans)):
            sample = process_sample(pid, number, started, s3_port)
            result.samples.append(sample)
            print(f"after {number} jobs: {sample}", file=sys.stderr, flush=True)  # progress of a long run
    result.seconds = time.monotonic() - started
    result.problems += growth_problems(result.samples, warmup)
    return result


def growth_problems(samples: list[Sample], warmup: int) -> list[str]:
    """RSS more than 5 % above, or descriptors/threads above, the sample at `warmup` jobs."""
    base = next((sample for sample in samples if sample.jobs == warmup), None)
    if base is None:
        return []
    problems = []
    for sample in (sample for sample in samples if sample.jobs > warmup):
        if sample.rss_mb > base.rss_mb * (1 + MAX_RSS_GROWTH):
            problems.append(
                f"RSS grew from {base.rss_mb:.0f} MB to {sample.rss_mb:.0f} MB by job {sample.jobs}"
            )
        if sample.fds > base.fds:
            problems.append(f"open descriptors grew from {base.fds} to {sample.fds} by job {sample.jobs}")
        if sample.s3_connections > MAX_PARALLEL_UPLOADS:
            problems.append(f"{sample.s3_connections} connections to S3 by job {sample.jobs}")
        if sample.threads > base.threads:
            problems.append(f"threads grew from {base.threads} to {sample.threads} by job {sample.jobs}")
    return problems


def soak(jobs: int, every: int, warmup: int, checkpoints: Path | None, workdir: Path) -> SoakResult:
    """Set everything up in `workdir`, run `jobs` jobs and return what was measured."""
    with ExitStack() as stack:
        if checkpoints is None:
            from tiny_checkpoints import write_tiny_checkpoints

            checkpoints = write_tiny_checkpoints(workdir / "checkpoints", seed=0)
        s3 = start_seaweedfs(workdir / "seaweedfs")
        stack.callback(s3.stop)
        files = stack.enter_context(FileServer())
        plans = plan_jobs(jobs, files)
        env = served_worker_env(checkpoints, **s3.env(s3.create_bucket("soak")))
        worker = stack.enter_context(api_worker(env, workdir / "worker.log"))
        return run_soak(worker, plans, every, warmup, urlsplit(s3.endpoint_url).port)


def report(result: SoakResult) -> str:
    lines = [f"{result.jobs} jobs in {result.seconds:.1f} s: {result.jobs_per_second:.2f} jobs/s",
             "  jobs  seconds  RSS MB  fds  threads  S3 connections"]  # fmt: skip
    lines += [
        f"{s.jobs:6d} {s.seconds:8.1f} {s.rss_mb:7.1f} {s.fds:4d} {s.threads:8d} {s.s3_connections:15d}"
        for s in result.samples
    ]
    lines += [f"PROBLEM: {problem}" for problem in result.problems] or ["flat: no growth after the warm-up"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--every", type=int, default=20, help="sample the worker every N jobs")
    parser.add_argument("--warmup", type=int, default=20, help="the baseline sample is taken after N jobs")
    parser.add_argument("--checkpoints", type=Path, help="a checkpoint tree (default: tiny, generated)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as workdir:
        result = soak(args.jobs, args.every, args.warmup, args.checkpoints, Path(workdir))
    print(report(result))
    return 1 if result.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

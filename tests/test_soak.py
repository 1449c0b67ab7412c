"""The soak benchmark's 30-job version: the worker process stays flat and answers every job right.

`bench/soak.py` runs the real worker (`python handler.py --rp_serve_api`) in its own process with
a loopback file server and a private SeaweedFS; the 200-job run and its figures are in
bench/README.md.
"""

from bench.soak import report, soak


def test_thirty_jobs_leave_memory_descriptors_and_threads_flat(tiny_root, tmp_path):
    result = soak(jobs=30, every=10, warmup=20, checkpoints=tiny_root, workdir=tmp_path)
    print(report(result))
    assert result.problems == [], report(result)
    assert [sample.jobs for sample in result.samples] == [0, 10, 20, 30]

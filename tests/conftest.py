"""Shared fixtures: one tiny checkpoint tree per test session (generated, never downloaded), the
tiny pipelines on it, and a real S3 server."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from worker_support import ALLOW_PRIVATE_URLS, FileServer

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def build_stage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with only what the Dockerfile copies in before the weights step
    (`builder.BUILD_CONTEXT`): the builder commands must run from it alone."""
    from builder import BUILD_CONTEXT

    root = tmp_path_factory.mktemp("builder-stage")
    for entry in BUILD_CONTEXT:
        source, target = REPO_ROOT / entry, root / entry
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return root


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The complete tiny checkpoint tree (diffusion + preprocessing), written once."""
    from tiny_checkpoints import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"), seed=0)


@pytest.fixture(scope="session")
def tiny_ootd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only the diffusion part of the tiny tree (for tests that need no preprocessing)."""
    from tiny_checkpoints.diffusion import write_tiny_ootd_checkpoints

    root = tmp_path_factory.mktemp("ootd-checkpoints")
    write_tiny_ootd_checkpoints(root, seed=0)
    return root


@pytest.fixture(scope="module")
def pipes(tiny_ootd_root: Path) -> dict:
    """Both tiny try-on pipelines by model type, progress bars off; loaded afresh for each test
    module, so that what one module sets on them (a garment cache, say) stays in it."""
    from ootd import load_pipelines

    pipes = load_pipelines(tiny_ootd_root)
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real S3-compatible server (SeaweedFS) on 127.0.0.1 for the whole session.

    Yields a `tests/s3_server.S3Server`: `.endpoint_url`, `.access_key`, `.secret_key`,
    `.create_bucket()` (a fresh bucket), `.env(bucket)` (BUCKET_* variables with quick
    retries), `.s3_config(bucket)` (RunPod's per-job shape), `.client()`, `.get(url)`.
    """
    from s3_server import start_seaweedfs

    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket on the session's S3 server."""
    return s3_server.create_bucket()


@pytest.fixture
def allow_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lift the SDK's private-address refusal: the tests' image hosts are on 127.0.0.1."""
    monkeypatch.setenv(ALLOW_PRIVATE_URLS, "true")


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    """A loopback image host for one test (`FileServer`)."""
    with FileServer() as server:
        yield server

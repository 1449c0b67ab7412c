"""Shared fixtures: one tiny checkpoint tree per test session (generated, never downloaded)."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The complete tiny checkpoint tree (diffusion + preprocessing), written once."""
    from tiny_checkpoints import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"), seed=0)


@pytest.fixture(scope="session")
def tiny_ootd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only the diffusion part of the tiny tree (for tests that need no preprocessing)."""
    from ootd.tiny import write_tiny_ootd_checkpoints

    root = tmp_path_factory.mktemp("ootd-checkpoints")
    write_tiny_ootd_checkpoints(root, seed=0)
    return root

"""Write a complete, tiny, randomly initialised checkpoint tree in the published layout.

The real OOTDiffusion weights are about 15 GB and cannot be downloaded on development or CI
machines. This tree has the exact directory layout and file formats of the published
`checkpoints/` folder (plus `clip-vit-large-patch14/`), so the real loading code runs on it
unchanged: the diffusion parts come from `tiny_checkpoints.diffusion`, the preprocessing networks
from `tiny_checkpoints.preprocessing` and `tiny_checkpoints.pose`.

The writers live here, outside `ootd/` and `preprocess/`, because they are test and benchmark
equipment: the Docker image copies only the production packages and never ships them.
"""

from pathlib import Path

from tiny_checkpoints.diffusion import write_tiny_ootd_checkpoints
from tiny_checkpoints.preprocessing import write_tiny_preprocess_checkpoints


def write_tiny_checkpoints(root: str | Path, seed: int = 0) -> Path:
    """Write every file the worker loads under `root` and return it as a Path."""
    root = Path(root)
    write_tiny_ootd_checkpoints(root, seed=seed)
    write_tiny_preprocess_checkpoints(root, seed=seed)
    return root

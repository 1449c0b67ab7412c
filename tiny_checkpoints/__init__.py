"""Write a complete, tiny, randomly initialised checkpoint tree in the published layout.

The real OOTDiffusion weights are about 15 GB and cannot be downloaded on development or CI
machines. This tree has the exact directory layout and file formats of the published
`checkpoints/` folder (plus `clip-vit-large-patch14/`), so the real loading code runs on it
unchanged: the diffusion parts come from `ootd.tiny`, the preprocessing networks from
`preprocess.tiny`.
"""

from pathlib import Path

from ootd.tiny import write_tiny_ootd_checkpoints
from preprocess.tiny import write_tiny_preprocess_checkpoints


def write_tiny_checkpoints(root: str | Path, seed: int = 0) -> Path:
    """Write every file the worker loads under `root` and return it as a Path."""
    root = Path(root)
    write_tiny_ootd_checkpoints(root, seed=seed)
    write_tiny_preprocess_checkpoints(root, seed=seed)
    return root

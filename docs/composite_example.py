"""Draw the README's before/after pair for `composite` (issue 19) with the tiny random tree.

    .venv/bin/python -m docs.composite_example

One job, run twice through the handler with the same seed: `composite: false` (the published
output: the whole frame as the VAE redrew it) and the default (the photo's own pixels outside
the mask and its blend band). The tiny networks are random, so the try-on itself is noise: the
pair shows what is kept, not the quality of a try-on. The person is the house photo at 256x256,
the mask a caller's mask over the torso (the tiny parser's own mask covers almost all of this
photo), the garment the demo T-shirt. Writes docs/composite-false.png and docs/composite-true.png.
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs"
SIZE = (256, 256)


def _uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def torso_mask(size: tuple[int, int]) -> Image.Image:
    """The astronaut's torso and shoulders, drawn by hand on the 256x256 photo."""
    mask = Image.new("L", size, 0)
    outline = [(60, 150), (120, 125), (205, 130), (240, 190), (240, 256), (45, 256)]
    ImageDraw.Draw(mask).polygon(outline, fill=255)
    return mask


def main() -> None:
    from tiny_checkpoints import write_tiny_checkpoints

    root = write_tiny_checkpoints(Path(tempfile.mkdtemp()), seed=0)
    os.environ.update(CHECKPOINTS_DIR=str(root), EXTRA_RESOLUTIONS="256x192", ALLOW_CPU="true")
    import handler

    person = Image.open(ROOT / "assets/models/0_astronaut.png").convert("RGB")
    person = person.resize(SIZE, Image.Resampling.LANCZOS)
    job = {"person": _uri(person), "mask": _uri(torso_mask(SIZE)),
           "garment": _uri(Image.open(ROOT / "assets/garments/0_tshirt.png")),
           "resolution": "256x192", "steps": 4, "seed": 7}  # fmt: skip
    for keep in (False, True):
        result = handler.handler({"id": "example", "input": {**job, "composite": keep}})
        if "error" in result:
            raise SystemExit(result["error"])
        path = OUT / f"composite-{str(keep).lower()}.png"
        path.write_bytes(base64.b64decode(result["images"][0]["base64"]))
        print(path)


if __name__ == "__main__":
    main()

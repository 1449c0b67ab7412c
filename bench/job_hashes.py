"""`python -m bench.job_hashes`: hashes of one job's outputs per category on the tiny tree.

For refactors that must not change behaviour: run it on the old and the new checkout (same
machine, same torch) and compare the lines. The jobs cover HD upper body, DC upper body, lower
body (stretched) and dress (two samples), and an RGBA garment with a caller's RGBA mask on an
RGBA person photo (the flattening paths); each returns its mask too. Run from the repository root.

Those five ask for `output_size: "frame", composite: false`: the generated frame as the model
made it (cropped back when padded), so their lines also compare against checkouts from before
issue 19. The `*_input` jobs take the defaults (the photo's own size, composited over it).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def _uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def jobs() -> dict[str, dict]:
    tshirt = Image.open(ROOT / "assets/garments/0_tshirt.png")
    faded = tshirt.convert("RGBA")
    faded.putalpha(Image.linear_gradient("L").resize(faded.size))
    mask = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    mask.paste((255, 255, 255, 255), (50, 80, 250, 280))
    person = Image.open(ROOT / "assets/models/0_astronaut.png").convert("RGBA")
    defaults = {"person_index": 0, "garment": _uri(tshirt), "resolution": "256x192", "steps": 2, "seed": 7,
                "return_mask": True}  # fmt: skip
    base = {**defaults, "output_size": "frame", "composite": False}
    own_person = {"garment": _uri(faded), "mask": _uri(mask), "person": _uri(person)}
    dc_lower = {"model_type": "dc", "category": "lower_body", "fit": "stretch"}

    def without_index(job: dict) -> dict:
        return {k: v for k, v in job.items() if k != "person_index"}

    return {
        "hd_upper": base,
        "dc_upper": {**base, "model_type": "dc", "category": "upper_body"},
        "dc_lower": {**base, **dc_lower},
        "dc_dress": {**base, "model_type": "dc", "category": 2, "samples": 2},
        "hd_rgba_garment_usermask": {**without_index(base), **own_person},
        "hd_upper_input": defaults,
        "dc_lower_stretch_input": {**defaults, **dc_lower},
        "hd_rgba_garment_usermask_input": {**without_index(defaults), **own_person},
    }  # fmt: skip


def main() -> None:
    from tiny_checkpoints import write_tiny_checkpoints

    root = write_tiny_checkpoints(Path(tempfile.mkdtemp()), seed=0)
    os.environ.update(CHECKPOINTS_DIR=str(root), EXTRA_RESOLUTIONS="256x192", ALLOW_CPU="true")
    import handler

    for name, job_input in jobs().items():
        result = handler.handler({"id": name, "input": job_input})
        if "error" in result:
            raise SystemExit(f"{name}: {result['error']}")
        files = [*result["images"], result["mask"]]
        digests = [hashlib.sha256(base64.b64decode(entry["base64"])).hexdigest()[:16] for entry in files]
        print(name, result["model_type"], result["category"], " ".join(digests))


if __name__ == "__main__":
    main()

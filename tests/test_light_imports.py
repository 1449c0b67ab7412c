"""What must start without torch: the worker's settings and the builder's weight fetcher.

`worker.config` is read by every entry point before any model loads, and `builder.fetch_weights`
runs in the image's download stage; neither may pay for torch or diffusers (seconds, and the
builder stage does not need them). Checked in a fresh interpreter: this test process has long
imported both.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "diffusers", "transformers")


def heavy_modules_after(statement: str) -> list[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "statement", ["import worker.config", "import builder.fetch_weights", "import ootd, ootd.layout"]
)
def test_loads_no_torch_or_diffusers(statement) -> None:
    assert heavy_modules_after(statement) == []


def test_the_package_names_still_load_on_use() -> None:
    statement = "from ootd import CATEGORIES, OOTDiffusionPipeline, load_pipelines"
    assert heavy_modules_after(statement) == list(HEAVY)

"""`python -m worker.local`: run one job through the handler and write its images to a folder.

The RunPod SDK's own local mode (`python handler.py`) prints the result, base64 and all, to the
log; this runs the same handler code on a job file (default `test_input.json`) and saves what
comes back as files, which is what a person trying the worker on a laptop wants. Field values
can be overridden for a quick CPU run, e.g. `--set steps=2 --set resolution=512x384`.

Unlike the deployed worker it runs on the CPU without being told (ALLOW_CPU defaults to true) and
skips the warm-up (WARMUP defaults to false: the one job it runs is the first anyway); either
variable set in the environment wins.
"""

import argparse
import base64
import json
import logging
import os
import sys
from pathlib import Path

from worker.config import Settings
from worker.images import EXTENSIONS
from worker.job import handle
from worker.startup import StartupError, start

LOCAL_DEFAULTS = {"ALLOW_CPU": "true", "WARMUP": "false"}
_EXTENSION_OF = {f"image/{name}": extension for name, extension in EXTENSIONS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.local", description=__doc__.splitlines()[0])
    parser.add_argument("job", nargs="?", default="test_input.json", help="job file: {'input': {...}}")
    parser.add_argument("--out", default="outputs", help="folder for the images (default: outputs)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="override an input field"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    job = json.loads(Path(args.job).read_text())
    job.setdefault("id", "local")
    for item in args.set:
        field, _, raw = item.partition("=")
        job["input"][field] = _value(raw)
    try:
        settings = Settings.from_env({**LOCAL_DEFAULTS, **os.environ})
        runtime = start(settings)
    except (StartupError, ValueError) as error:
        print(f"cannot start: {error}", file=sys.stderr)
        return 1
    result = handle(job, runtime, settings)
    if "error" in result:
        print(f"job failed: {result['error']}", file=sys.stderr)
        return 1

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    entries = [(f"{job['id']}-{index}", entry) for index, entry in enumerate(result["images"])]
    if "mask" in result:
        entries.append((f"{job['id']}-mask", result["mask"]))
    for name, entry in entries:
        if "base64" in entry:
            path = out / f"{name}.{_EXTENSION_OF.get(entry['content_type'], 'bin')}"
            path.write_bytes(base64.b64decode(entry.pop("base64")))
            entry["file"] = str(path)
        print(entry.get("file") or entry.get("url"))
    (out / f"{job['id']}-result.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _value(raw: str):
    """A JSON value when it parses (2, 1.5, true), else the text itself (512x384, jpeg)."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


if __name__ == "__main__":
    sys.exit(main())

"""Bake the model weights into the image: download exactly the needed files, then check them.

    python -m builder.fetch_weights --dest /weights --model-types hd,dc
    python -m builder.fetch_weights --dest /weights --bake clip  # only CLIP (OOTD from RunPod's cache)
    python -m builder.fetch_weights --dest /weights --check     # verify only, download nothing

The destination is laid out as the checkpoints root (`ootd/...`, `humanparsing/...`,
`openpose/...`, `clip-vit-large-patch14/...`), so pointing CHECKPOINTS_DIR at it is all
the worker needs. The token comes from HF_TOKEN or a BuildKit secret file, never from a
build argument (those stay readable in the image history). No torch import here: the
step has to be light and fast to start.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    DisabledRepoError,
    HFValidationError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from builder.plan import (
    BAKE_CHOICES,
    CLIP_REPO,
    OOTD_REPO,
    HubFile,
    baked_files,
    check_bake,
    weight_plan,
)
from core.vocabulary import parse_model_types
from ootd.layout import missing_files, present_form

logger = logging.getLogger("builder.fetch_weights")

DEFAULT_MODEL_TYPES = "hd,dc"
DEFAULT_BAKE = "all"
DEFAULT_TOKEN_FILE = "/run/secrets/hf_token"  # where `RUN --mount=type=secret,id=hf_token` puts it
STAGING_DIR = ".hub-download"  # inside dest, so moving a finished file into place is a rename

# Errors that no retry can fix: the hub said the name, revision or access is wrong. (Not
# EntryNotFoundError: its LocalEntryNotFoundError child is what a network failure looks like.)
PERMANENT_ERRORS = (RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError,
                    DisabledRepoError, HFValidationError)


class WeightsError(RuntimeError):
    """A download that failed for good, or a weights folder that is incomplete."""


def read_token(token_file: str | None, env: dict[str, str] | None = None) -> str | None:
    """The hub token: HF_TOKEN if set, else the first line of `token_file` if it exists."""
    env = os.environ if env is None else env
    token = (env.get("HF_TOKEN") or "").strip()
    if token:
        return token
    if token_file and Path(token_file).is_file():
        return Path(token_file).read_text().strip() or None
    return None


def download_one(
    item: HubFile,
    dest: Path,
    *,
    token: str | None,
    endpoint: str | None,
    attempts: int,
    backoff: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Fetch one file into place under `dest`, retrying transient failures with doubling waits.

    A file already in place is kept: files are moved in only once complete, so a re-run
    after a failed build resumes where it stopped, and a file `builder.to_fp16` has already
    converted is not fetched again.
    """
    present = present_form(dest, item.dest)
    if present is not None:
        return present
    target = dest / item.dest
    staging = dest / STAGING_DIR / item.repo_id.replace("/", "--")
    for attempt in range(1, attempts + 1):
        try:
            downloaded = hf_hub_download(
                item.repo_id,
                item.filename,
                revision=item.revision,
                local_dir=staging,
                token=token,
                endpoint=endpoint,
            )
            break
        except PERMANENT_ERRORS as exc:
            raise WeightsError(
                f"{item.repo_id}@{item.revision}: {item.filename}: {type(exc).__name__} (not retried)"
            ) from exc
        except Exception as exc:
            if attempt == attempts:
                raise WeightsError(
                    f"{item.repo_id}@{item.revision}: {item.filename}: failed after {attempts} attempts "
                    f"({type(exc).__name__})"
                ) from exc
            wait = backoff * 2 ** (attempt - 1)
            logger.warning("%s: %s on attempt %d; retrying in %.1f s", item.filename, type(exc).__name__,
                           attempt, wait)
            sleep(wait)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(downloaded, target)
    return target


def check_weights(dest: Path, model_types: tuple[str, ...], bake: str = DEFAULT_BAKE) -> list[str]:
    """The files to bake missing under `dest` (empty when the folder is complete); either form
    of a weights file counts (`ootd.layout.accepted_forms`: converted by `builder.to_fp16` or not)."""
    return missing_files(dest, baked_files(model_types, bake))


def _scope(model_types: tuple[str, ...], bake: str) -> str:
    scope = f"model types {','.join(model_types)}"
    return scope if bake == "all" else f"{scope}, bake {bake}"


def missing_report(
    dest: Path, model_types: tuple[str, ...], missing: Sequence[str], bake: str = DEFAULT_BAKE
) -> str:
    """A message that names every missing file, one per line."""
    total = len(baked_files(model_types, bake))
    lines = [f"weights in {dest} are incomplete for {_scope(model_types, bake)}: "
             f"{len(missing)} of {total} required files missing:"]
    lines += [f"  missing: {name}" for name in missing]
    return "\n".join(lines)


def fetch_weights(
    dest: Path,
    model_types: tuple[str, ...],
    *,
    token: str | None = None,
    endpoint: str | None = None,
    attempts: int = 5,
    backoff: float = 5.0,
    ootd_revision: str = "main",
    clip_revision: str = "main",
    bake: str = DEFAULT_BAKE,
) -> list[Path]:
    """Download every file to bake into `dest`, check completeness, and return the paths."""
    dest.mkdir(parents=True, exist_ok=True)
    plan = weight_plan(model_types, ootd_revision, clip_revision, bake)
    paths = []
    started = time.monotonic()
    for index, item in enumerate(plan, 1):
        path = download_one(item, dest, token=token, endpoint=endpoint, attempts=attempts, backoff=backoff)
        logger.info("[%d/%d] %s (%.1f MB)", index, len(plan), item.dest, path.stat().st_size / 1e6)
        paths.append(path)
    shutil.rmtree(dest / STAGING_DIR, ignore_errors=True)
    missing = check_weights(dest, model_types, bake)
    if missing:
        raise WeightsError(missing_report(dest, model_types, missing, bake))
    total = sum(path.stat().st_size for path in paths)
    logger.info("weights complete: %d files, %.2f GB in %.0f s", len(paths), total / 1e9,
                time.monotonic() - started)
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m builder.fetch_weights", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--dest", type=Path, required=True, help="checkpoints root to fill (e.g. /weights)")
    parser.add_argument("--model-types", default=os.environ.get("OOTD_MODEL_TYPES") or DEFAULT_MODEL_TYPES,
                        help="comma-separated: hd, dc or hd,dc (default: $OOTD_MODEL_TYPES or hd,dc)")
    parser.add_argument("--bake", default=os.environ.get("BAKE_WEIGHTS") or DEFAULT_BAKE,
                        help=f"what to bake: {'|'.join(BAKE_CHOICES)} (default: $BAKE_WEIGHTS or all); "
                             "clip = only CLIP, for endpoints that take the OOTD checkpoints from RunPod's "
                             "model cache")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only check that every required file is present")
    mode.add_argument("--list", action="store_true", help="print repo, revision, hub path and destination")
    parser.add_argument("--endpoint", default=os.environ.get("HF_ENDPOINT") or None,
                        help="hub URL (default: $HF_ENDPOINT or the public hub)")
    parser.add_argument("--token-file", default=os.environ.get("HF_TOKEN_FILE") or DEFAULT_TOKEN_FILE,
                        help="file holding the hub token, used when HF_TOKEN is unset")
    parser.add_argument("--attempts", type=int, default=5, help="tries per file (default 5)")
    parser.add_argument("--backoff", type=float, default=5.0, help="first wait between tries, doubling (s)")
    parser.add_argument("--ootd-revision", default="main", help=f"revision of {OOTD_REPO}")
    parser.add_argument("--clip-revision", default="main", help=f"revision of {CLIP_REPO}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        model_types = parse_model_types(args.model_types)
        bake = check_bake(args.bake.strip().lower())
    except ValueError as exc:
        parser.error(str(exc))
    if args.attempts < 1 or args.backoff < 0:
        parser.error("--attempts must be at least 1 and --backoff at least 0")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)

    if args.list:
        for item in weight_plan(model_types, args.ootd_revision, args.clip_revision, bake):
            print(f"{item.repo_id}\t{item.revision}\t{item.filename}\t{item.dest}")
        return 0
    if args.check:
        missing = check_weights(args.dest, model_types, bake)
        if missing:
            print(missing_report(args.dest, model_types, missing, bake), file=sys.stderr)
            return 1
        print(f"weights in {args.dest} are complete for {_scope(model_types, bake)}")
        return 0
    try:
        fetch_weights(
            args.dest,
            model_types,
            token=read_token(args.token_file),
            endpoint=args.endpoint,
            attempts=args.attempts,
            backoff=args.backoff,
            ootd_revision=args.ootd_revision,
            clip_revision=args.clip_revision,
            bake=bake,
        )
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

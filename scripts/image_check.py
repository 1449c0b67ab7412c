"""The host side of `scripts/image-check.sh`: what is easier in Python than in bash.

    python scripts/image_check.py pip-config < `pip config list` > pip.conf   # the build's pip index
    python scripts/image_check.py save-result LOG_OR_JSON OUT_PREFIX          # a job's images to files
    engine save IMAGE | python scripts/image_check.py sizes --image NAME      # layer sizes, gzip sizes

Only the standard library plus Pillow (the checkout's venv), so the script needs nothing new.
"""

from __future__ import annotations

import argparse
import ast
import base64
import io
import json
import re
import sys
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit, urlunsplit

# pip options that say where packages come from and how to reach it; URL-valued ones are kept only
# for http(s) URLs (a file:// index or a local folder on the host does not exist inside the build).
# `cert` is not forwarded: the script passes the machine's CA bundle as a secret of its own.
PIP_URL_OPTIONS = ("index-url", "extra-index-url", "find-links", "proxy")
PIP_PLAIN_OPTIONS = ("trusted-host", "timeout", "default-timeout", "retries")
PIP_SECTIONS = ("global", "install", ":env:")

# What registries store and a pull transfers: each layer gzip-compressed at the default level.
GZIP_LEVEL = 6
SMALL_BLOB = 4 << 20  # configs and manifests are read whole; layers are streamed
SDK_RESULT_MARK = "Job result: "
DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class PipConfig:
    """The build's pip configuration, and what was left out (for the script's message)."""

    options: dict[str, list[str]]
    left_out: list[str]

    def render(self) -> str:
        """pip.conf text ("" when there is nothing to set: pip's defaults then apply)."""
        if not self.options:
            return ""
        lines = ["[global]"]
        for key, values in self.options.items():
            lines.append(f"{key} = " + "\n    ".join(values))
        return "\n".join(lines) + "\n"

    def describe(self) -> list[str]:
        """One line per forwarded option, URL credentials masked (these lines are printed)."""
        return [f"{key} = {' '.join(map(_mask, values))}" for key, values in self.options.items()]


def pip_build_config(config_list: str) -> PipConfig:
    """The index settings of `pip config list` output that also work inside a container build.

    Later lines win, as in pip (site, then user, then environment); multi-valued options are
    whitespace-separated lists. Values may carry credentials, which is why the script passes the
    result as a build secret and never as a build argument.
    """
    options: dict[str, list[str]] = {}
    left_out: list[str] = []
    for line in config_list.splitlines():
        name, sep, raw = line.partition("=")
        section, _, key = name.strip().rpartition(".")
        if not sep or section not in PIP_SECTIONS or key not in PIP_URL_OPTIONS + PIP_PLAIN_OPTIONS:
            continue
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()
        values = str(value).split()
        if key in PIP_URL_OPTIONS:
            reachable = [item for item in values if urlsplit(item).scheme in ("http", "https")]
            dropped = [f"{key} {item}" for item in values if item not in reachable]
            left_out += [label for label in dropped if label not in left_out]
            values = reachable
        if values:
            options[key] = values
        else:
            options.pop(key, None)
    return PipConfig(options, left_out)


def _mask(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def job_output(text: str) -> dict:
    """A job's output from a /runsync answer (JSON) or from the runpod SDK's local-test log."""
    stripped = text.strip()
    if stripped.startswith("{"):
        answer = json.loads(stripped)
        if answer.get("status") != "COMPLETED":
            raise ValueError(f"the job did not complete: {_brief(answer)}")
        return answer["output"]
    for line in reversed(text.splitlines()):
        if SDK_RESULT_MARK in line:
            try:
                result = ast.literal_eval(line.split(SDK_RESULT_MARK, 1)[1])
            except (ValueError, SyntaxError):
                raise ValueError(
                    "the result line is not whole (the runpod SDK cuts log messages over 4096 characters)"
                ) from None
            if "error" in result:
                raise ValueError(f"the job failed: {result['error']}")
            return result.get("output", result)
    raise ValueError(f"no {SDK_RESULT_MARK!r} line in the log")


def save_images(output: dict, prefix: Path) -> list[str]:
    """Write the output's inline images as files; return one description per image."""
    from PIL import Image  # the checkout's venv has it; imported here so `sizes` needs nothing

    images = output.get("images") or []
    if not images:
        raise ValueError(f"the output has no images: {_brief(output)}")
    saved = []
    for index, image in enumerate(images):
        data = base64.b64decode(image["base64"])
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()  # a truncated or corrupt file fails here
            suffix = opened.format.lower()
            size = opened.size
        path = prefix.with_name(f"{prefix.name}-{index}.{suffix}")
        path.write_bytes(data)
        saved.append(f"{path} ({size[0]}x{size[1]} {suffix}, seed {output.get('seed')})")
    return saved


def _brief(value: object, limit: int = 300) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class Layer:
    """One layer of an image: its bytes as stored (uncompressed tar) and gzip-compressed."""

    size: int
    gzip_size: int
    created_by: str


def gzip_size(stream: BinaryIO, chunk: int = 1 << 20) -> int:
    """Bytes of `stream` gzip-compressed at the level registries use, without keeping the output."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    total = 0
    while block := stream.read(chunk):
        total += len(compressor.compress(block))
    return total + len(compressor.flush())


def image_layers(archive: BinaryIO, known: dict[str, int] | None = None) -> list[Layer]:
    """The layers of the single image in a `docker save` / `podman save` archive, read as a stream.

    Both the docker-archive and the OCI layout carry a `manifest.json` naming the config and the
    layer files in order; the config's non-empty history entries say which instruction made
    each layer. Each layer is compressed as it streams by, so nothing of its size is held.
    `known` maps a layer's digest (in its file name: the archives are content-addressed) to its
    gzip size: a layer found there is not compressed again, and new ones are added to it.
    """
    known = {} if known is None else known
    sizes: dict[str, tuple[int, int]] = {}
    small: dict[str, bytes] = {}
    links: dict[str, str] = {}
    with tarfile.open(fileobj=archive, mode="r|") as tar:
        for member in tar:
            if member.issym() or member.islnk():
                base = member.name.rsplit("/", 1)[0] if member.issym() and "/" in member.name else ""
                target = member.linkname if member.islnk() or not base else f"{base}/{member.linkname}"
                links[member.name] = _normalise(target)
                continue
            if not member.isfile():
                continue
            handle = tar.extractfile(member)
            assert handle is not None
            if member.size <= SMALL_BLOB:
                data = handle.read()
                small[member.name] = data
                sizes[member.name] = (member.size, gzip_size(io.BytesIO(data)))
            else:
                digest = DIGEST.search(member.name)
                key = f"{digest.group(0)}:{member.size}" if digest else None
                if key is None or key not in known:
                    gzipped = gzip_size(handle)
                    if key is not None:
                        known[key] = gzipped
                sizes[member.name] = (member.size, known[key] if key is not None else gzipped)
    if "manifest.json" not in small:
        raise ValueError("the archive has no manifest.json (not a docker save / podman save archive)")
    manifests = json.loads(small["manifest.json"])
    if len(manifests) != 1:
        raise ValueError(f"the archive holds {len(manifests)} images, expected one")
    config = json.loads(small[links.get(manifests[0]["Config"], manifests[0]["Config"])])
    history = config.get("history", [])
    made_by = [entry.get("created_by", "") for entry in history if not entry.get("empty_layer")]
    layers = []
    for index, name in enumerate(manifests[0]["Layers"]):
        size, gzipped = sizes[links.get(name, name)]
        layers.append(Layer(size, gzipped, made_by[index] if index < len(made_by) else ""))
    return layers


def _normalise(path: str) -> str:
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/".join(parts)


def size_report(
    image: str, layers: Iterable[Layer], base_layers: int = 0, largest: int = 5
) -> tuple[str, dict]:
    """The lines the script prints, and the same numbers as a dict (saved as sizes.json).

    `base_layers`: how many of the first layers are the base image's, reported apart because a
    stand-in base differs in size from the official one while the layers above it do not.
    """
    layers = list(layers)
    total = sum(layer.size for layer in layers)
    compressed = sum(layer.gzip_size for layer in layers)
    base, ours = layers[:base_layers], layers[base_layers:]
    lines = [
        f"{image}: {_gb(total)} uncompressed, {_gb(compressed)} gzip-compressed (what a pull transfers), "
        f"{len(layers)} layers",
        f"  base image ({len(base)} layers): {_gb(sum(layer.size for layer in base))} / "
        f"{_gb(sum(layer.gzip_size for layer in base))} gzip; the Dockerfile's own layers ({len(ours)}): "
        f"{_gb(sum(layer.size for layer in ours))} / {_gb(sum(layer.gzip_size for layer in ours))} gzip",
        "largest layers (uncompressed / gzip, GB = 10^9 bytes):",
    ]
    for layer in sorted(layers, key=lambda layer: layer.size, reverse=True)[:largest]:
        lines.append(f"  {_gb(layer.size):>9} / {_gb(layer.gzip_size):>9}  {_instruction(layer.created_by)}")
    numbers = {
        "image": image,
        "bytes": total,
        "gzip_bytes": compressed,
        "base_layers": len(base),
        "layers": [{"bytes": layer.size, "gzip_bytes": layer.gzip_size, "created_by": layer.created_by}
                   for layer in layers],
    }
    return "\n".join(lines), numbers


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 10**7 else f"{size / 1e6:.2f} MB"


def _instruction(created_by: str, limit: int = 100) -> str:
    """The Dockerfile instruction behind a history entry, shortened in the middle (a RUN's end says most)."""
    text = " ".join(created_by.split())
    if text.startswith("/bin/sh -c #(nop) "):
        text = text.removeprefix("/bin/sh -c #(nop) ")
    elif text.startswith("/bin/sh -c "):
        text = "RUN " + text.removeprefix("/bin/sh -c ")
    text = re.sub(r"--mount=\S+ ", "", text)
    return text if len(text) <= limit else f"{text[: limit // 3]} ... {text[-(limit - limit // 3 - 5):]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pip = commands.add_parser("pip-config", help="stdin: `pip config list`; stdout: the build's pip.conf")
    pip.add_argument("--describe", type=Path, help="write the forwarded settings (credentials masked) here")
    result = commands.add_parser("save-result", help="write a finished job's images as files")
    result.add_argument("source", type=Path, help="the SDK's log or a /runsync answer (JSON)")
    result.add_argument("prefix", type=Path, help="files are PREFIX-0.png, PREFIX-1.png, ...")
    sizes = commands.add_parser("sizes", help="stdin: a saved image archive; prints its sizes")
    sizes.add_argument("--image", required=True, help="the image's name, for the report")
    sizes.add_argument("--base-layers", type=int, default=0, help="how many first layers are the base's")
    sizes.add_argument("--json", type=Path, help="also write the numbers here")
    sizes.add_argument("--known", type=Path, help="JSON file of gzip sizes by layer digest, read and updated")
    args = parser.parse_args(argv)

    if args.command == "pip-config":
        config = pip_build_config(sys.stdin.read())
        sys.stdout.write(config.render())
        if args.describe:
            left_out = [f"left out (no such place in the build): {item}" for item in config.left_out]
            notes = config.describe() + left_out
            args.describe.write_text("\n".join(notes) + ("\n" if notes else ""))
    elif args.command == "save-result":
        try:
            saved = save_images(job_output(args.source.read_text(errors="replace")), args.prefix)
        except (ValueError, KeyError, OSError) as error:
            print(f"no result image: {error}", file=sys.stderr)
            return 1
        print("\n".join(f"saved {line}" for line in saved))
    else:
        known = json.loads(args.known.read_text()) if args.known and args.known.is_file() else {}
        layers = image_layers(sys.stdin.buffer, known)
        if args.known:
            args.known.write_text(json.dumps(known, indent=1) + "\n")
        text, numbers = size_report(args.image, layers, args.base_layers)
        print(text)
        if args.json:
            args.json.write_text(json.dumps(numbers, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

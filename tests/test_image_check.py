"""scripts/image-check.sh without building anything: it parses, its steps are the ones it runs and
documents, and its Python side (pip settings for the build, a job's images, layer sizes) works on
real inputs. The build and the smoke runs themselves are too heavy for CI (a ~6 GB image)."""

from __future__ import annotations

import base64
import gzip
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "image-check.sh"
RESULT = "INFO   | Job result: "  # how the runpod SDK's local test mode logs a job's result


@pytest.fixture(scope="module")
def helper():
    spec = importlib.util.spec_from_file_location("image_check", REPO_ROOT / "scripts" / "image_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def script_steps(text: str) -> list[str]:
    match = re.search(r"^STEPS=\(([^)]*)\)", text, re.MULTILINE)
    assert match, "no STEPS=(...) list"
    return match.group(1).split()


def test_the_script_parses_and_every_step_is_a_function_it_documents():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    text = SCRIPT.read_text()
    steps = script_steps(text)
    assert steps[:3] == ["engine", "base", "build"] and steps[-1] == "cleanup"
    functions = re.findall(r"^step_(\w+)\(\)", text, re.MULTILINE)
    assert sorted(functions) == sorted(step.replace("-", "_") for step in steps)
    header = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#   "))
    assert " ".join(steps) in " ".join(header.split()), "the header's step list is out of date"
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text


def test_pip_settings_keep_what_works_in_the_build_and_drop_host_paths(helper):
    listed = "\n".join([
        "global.cert='/etc/ssl/certs/ca-certificates.crt'",
        "global.constraint='/etc/xdg/pip/constraints.txt'",
        "global.extra-index-url='file:///opt/pypi/simple https://mirror.example/simple'",
        "global.find-links='/opt/wheels'",
        "global.index-url='https://old.example/simple'",
        "install.trusted-host='mirror.example'",
        ":env:.default-timeout='180'",
        ":env:.index-url='https://user:s3cret@proxy.example/pypi/simple'",
    ])
    config = helper.pip_build_config(listed)
    assert config.options == {
        "extra-index-url": ["https://mirror.example/simple"],
        "index-url": ["https://user:s3cret@proxy.example/pypi/simple"],  # the environment wins
        "trusted-host": ["mirror.example"],
        "default-timeout": ["180"],
    }
    assert config.left_out == ["extra-index-url file:///opt/pypi/simple", "find-links /opt/wheels"]
    rendered = config.render()
    assert rendered.startswith("[global]\n") and "index-url = https://user:s3cret@proxy.example" in rendered
    described = "\n".join(config.describe())
    assert "s3cret" not in described and "https://***@proxy.example/pypi/simple" in described
    assert helper.pip_build_config("global.find-links='/opt/wheels'").render() == ""


def png_base64(size=(6, 8)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_result_is_saved_from_the_sdk_log_and_from_a_runsync_answer(helper, tmp_path):
    output = {"images": [{"base64": png_base64(), "content_type": "image/png"}], "seed": 42}
    log = tmp_path / "cmd.log"
    log.write_text(f"INFO   | Job local_test completed.\nINFO   | Job result: {{'output': {output!r}}}\n")
    assert helper.main(["save-result", str(log), str(tmp_path / "cmd")]) == 0
    with Image.open(tmp_path / "cmd-0.png") as saved:
        assert saved.size == (6, 8)

    answer = tmp_path / "runsync.json"
    answer.write_text(json.dumps({"id": "x", "status": "COMPLETED", "output": output}))
    assert helper.main(["save-result", str(answer), str(tmp_path / "serve")]) == 0
    assert (tmp_path / "serve-0.png").read_bytes() == base64.b64decode(output["images"][0]["base64"])


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (RESULT + "{'error': 'garment: not an image'}\n", "the job failed: garment: not an image"),
        (RESULT + "{'output': {'images': [{'base64': 'bm90IGFuIGltYWdl'}]}}\n", "cannot identify"),
        (RESULT + "{'output': {'images': []}}\n", "the output has no images"),
        ("INFO   | worker started, no result line\n", "no 'Job result: ' line"),
        (RESULT + "{'output': {'images': [{'base64': 'iVBOR\n...TRUNCATED 99 CHARACTERS...\n", "not whole"),
        (json.dumps({"id": "x", "status": "IN_PROGRESS"}), "the job did not complete"),
    ],
)
def test_no_result_image_is_a_failure_that_says_why(helper, tmp_path, capsys, content, reason):
    source = tmp_path / "source"
    source.write_text(content)
    assert helper.main(["save-result", str(source), str(tmp_path / "out")]) == 1
    assert reason in capsys.readouterr().err
    assert not list(tmp_path.glob("out-*"))


def layer_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def docker_archive(layers: list[bytes], history: list[dict]) -> bytes:
    """A `docker save` archive of one image; the last layer repeats the first as a symlink."""
    buffer = io.BytesIO()
    config = json.dumps({"history": history, "rootfs": {"type": "layers"}}).encode()

    def add(tar, name, data=None, link=None):
        info = tarfile.TarInfo(name)
        if link:
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)
        else:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    names = [f"l{index}/layer.tar" for index in range(len(layers))]
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in zip(names, layers, strict=True):
            add(tar, name, data)
        add(tar, "l9/layer.tar", link="../l0/layer.tar")
        add(tar, "cfg.json", config)
        manifest = [{"Config": "cfg.json", "Layers": [*names, "l9/layer.tar"]}]
        add(tar, "manifest.json", json.dumps(manifest).encode())
    return buffer.getvalue()


def test_layer_sizes_are_the_stored_and_gzip_sizes_with_the_instruction(helper):
    compressible = layer_tar({"zeros": bytes(3_000_000)})
    random = layer_tar({"noise": os.urandom(6_000_000)})
    history = [
        {"created_by": "/bin/sh -c #(nop) ADD file:base in /"},
        {"created_by": "/bin/sh -c #(nop) ENV A=1", "empty_layer": True},
        {"created_by": "RUN /bin/bash -o pipefail -c pip install -r requirements.txt && pip check"},
        {"created_by": "COPY dir:again in /"},
    ]
    layers = helper.image_layers(io.BytesIO(docker_archive([compressible, random], history)))
    assert [layer.size for layer in layers] == [len(compressible), len(random), len(compressible)]
    assert layers[0].gzip_size == len(gzip.compress(compressible, compresslevel=6, mtime=0))
    assert layers[1].gzip_size == len(gzip.compress(random, compresslevel=6, mtime=0))
    made = [entry["created_by"] for entry in history if not entry.get("empty_layer")]
    assert [layer.created_by for layer in layers] == made

    text, numbers = helper.size_report("img", layers, base_layers=1, largest=2)
    assert numbers["bytes"] == 2 * len(compressible) + len(random)
    assert numbers["gzip_bytes"] == sum(layer.gzip_size for layer in layers)
    first, base_line, _, largest, second = text.splitlines()
    assert first.startswith(f"img: {numbers['bytes'] / 1e9:.2f} GB uncompressed") and "3 layers" in first
    assert "base image (1 layers)" in base_line and "own layers (2)" in base_line
    assert "pip install -r requirements.txt" in largest and "#(nop)" not in second


def test_an_archive_without_a_manifest_is_refused(helper):
    with pytest.raises(ValueError, match=r"manifest\.json"):
        helper.image_layers(io.BytesIO(layer_tar({"layer.tar": b"x"})))


def test_gzip_sizes_are_remembered_by_layer_digest(helper, monkeypatch):
    import hashlib

    layer = layer_tar({"data": os.urandom(5_000_000)})
    name = f"{hashlib.sha256(layer).hexdigest()}.tar"  # how podman save names a layer
    buffer = io.BytesIO()
    manifest = json.dumps([{"Config": "cfg.json", "Layers": [name]}]).encode()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member, data in ((name, layer), ("cfg.json", b'{"history": [{"created_by": "RUN x"}]}'),
                             ("manifest.json", manifest)):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = buffer.getvalue()
    known: dict[str, int] = {}
    first = helper.image_layers(io.BytesIO(archive), known)
    assert known == {f"{name.removesuffix('.tar')}:{len(layer)}": first[0].gzip_size}

    compress = helper.gzip_size

    def only_small_blobs(stream):
        data = stream.read()
        assert len(data) <= helper.SMALL_BLOB, "a known layer was compressed again"
        return compress(io.BytesIO(data))

    monkeypatch.setattr(helper, "gzip_size", only_small_blobs)
    assert helper.image_layers(io.BytesIO(archive), known) == first

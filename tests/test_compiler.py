"""OOTD_COMPILE without a compiler: refused at start in one line, before any weight is loaded.

The image has no C compiler; Triton (on CUDA) and inductor (on the CPU) need one the first time a
compiled shape runs, which would be the warm-up, at every start. The compilers here are real:
none at all (an empty PATH), this machine's gcc, and gcc without any system header (what a
compiler installed without libc's headers gives).
"""

import os
import shutil
from pathlib import Path

import pytest
import torch

from worker.compiler import compiler_problem, find_compiler
from worker.config import Settings
from worker.startup import StartupError, start

GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="needs gcc on PATH")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NO_C_COMPILER = (
    "OOTD_COMPILE=true needs a C compiler to build Triton's GPU kernels, and there is none (CC is unset "
    "and there is no gcc or clang on PATH); set OOTD_COMPILE=false, or install one (Debian: gcc libc6-dev)"
)
NO_CXX_COMPILER = (
    "OOTD_COMPILE=true needs a C++ compiler to build inductor's CPU kernels, and there is none (CXX is "
    "unset and there is no g++ on PATH); set OOTD_COMPILE=false, or install one (Debian: g++)"
)


@pytest.fixture
def no_compiler(tmp_path: Path, monkeypatch) -> Path:
    """A PATH with nothing on it, and neither CC nor CXX: the slim image's situation."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    return empty


def test_without_a_compiler_ootd_compile_refuses_to_start_in_one_line_before_loading(
    no_compiler: Path, tmp_path: Path
) -> None:
    # The checkpoints folder is empty: the compiler is refused before any weight is looked for.
    with pytest.raises(StartupError) as refused:
        start(Settings(checkpoints_dir=tmp_path, allow_cpu=True, compile=True))
    assert str(refused.value) == (NO_C_COMPILER if DEVICE == "cuda" else NO_CXX_COMPILER)


def test_the_refusal_names_what_each_device_needs(no_compiler: Path) -> None:
    env = {"PATH": str(no_compiler)}
    assert compiler_problem("cuda", env) == NO_C_COMPILER
    assert compiler_problem("cpu", env) == NO_CXX_COMPILER
    # A variable naming a compiler that is not there is the one place looked, as Triton does.
    problem = compiler_problem("cuda", {**env, "CC": "/opt/none/cc"})
    assert problem is not None and "(CC=/opt/none/cc is not a program)" in problem


@needs_gcc
def test_with_gcc_the_check_passes_and_start_goes_on_to_the_weights(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("CXX", GCC)  # gcc builds C++ as well; the CPU's default, g++, may be absent
    env = {"PATH": os.environ["PATH"], "CXX": GCC}
    assert find_compiler("cuda", env) == GCC
    assert compiler_problem("cuda", env) is None
    assert compiler_problem("cpu", env) is None
    # The next refusal is the empty weights folder's: the compile check let the start go on.
    with pytest.raises(StartupError, match=f"^CHECKPOINTS_DIR={tmp_path} lacks"):
        start(Settings(checkpoints_dir=tmp_path, allow_cpu=True, compile=True))


@needs_gcc
def test_a_compiler_without_the_system_headers_is_refused_too(tmp_path: Path) -> None:
    # gcc told to ignore the system's headers, as a gcc installed without libc6-dev has none.
    wrapper = tmp_path / "gcc-without-headers"
    wrapper.write_text(f'#!/bin/sh\nexec {GCC} -nostdinc "$@"\n')
    wrapper.chmod(0o755)
    problem = compiler_problem("cuda", {"PATH": os.environ["PATH"], "CC": str(wrapper)})
    assert problem is not None
    assert problem.startswith(
        f"OOTD_COMPILE=true needs a C compiler to build Triton's GPU kernels, and {wrapper} cannot compile "
        "against Python's headers ("
    )
    assert "fatal error" in problem and "No such file or directory" in problem
    assert problem.endswith("); set OOTD_COMPILE=false, or install the headers too (Debian: gcc libc6-dev)")
    assert "\n" not in problem

"""Whether `torch.compile` can build its kernels on this machine: `OOTD_COMPILE`'s start-up check.

inductor writes kernels as source and builds them the first time a shape runs. On CUDA they are
Triton kernels, launched through a small C module that Triton compiles with the C compiler it
finds (`CC`, else `gcc`, else `clang` on PATH); on the CPU inductor writes C++ and builds it with
`CXX`, else `g++`. The image (python:3.11-slim) has no compiler, and without one the warm-up's
first compiled forward fails with an error that matches no GPU pattern: the worker exits with a
traceback, RunPod starts it again, it fails again, a crash loop. So with `OOTD_COMPILE=true` the
worker looks for the compiler as those libraries do and has it compile a file that includes
Python's header (as both libraries' sources do: a compiler without libc's headers, which
`apt-get install --no-install-recommends gcc` leaves, fails there), before loading anything;
without a working one it refuses to start, in one line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Toolchain:
    """The compiler a device's compiled kernels are built with, and where it is looked for."""

    what: str  # "a C compiler"
    builds: str  # what it builds, for the refusal
    variable: str  # the environment variable that names it
    names: tuple[str, ...]  # looked for on PATH, in order, when the variable is unset
    packages: str  # what Debian (the image's base) installs it with, headers included


TOOLCHAINS = {
    "cuda": Toolchain("a C compiler", "Triton's GPU kernels", "CC", ("gcc", "clang"), "gcc libc6-dev"),
    "cpu": Toolchain("a C++ compiler", "inductor's CPU kernels", "CXX", ("g++",), "g++"),
}

PROBE = "#include <Python.h>\nint ootd_compiler_probe(void) { return 0; }\n"


def find_compiler(device_type: str, env: Mapping[str, str] | None = None) -> str | None:
    """The compiler inductor would build kernels for `device_type` with, as a path; None if there is none."""
    env = os.environ if env is None else env
    toolchain = TOOLCHAINS[device_type]
    named = env.get(toolchain.variable)
    candidates = [named] if named else list(toolchain.names)
    path = env.get("PATH", os.defpath)
    for name in candidates:
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


def compiler_problem(device_type: str, env: Mapping[str, str] | None = None) -> str | None:
    """Why `OOTD_COMPILE=true` cannot work here (one line that says what to do), or None."""
    env = os.environ if env is None else env
    toolchain = TOOLCHAINS[device_type]
    compiler = find_compiler(device_type, env)
    if compiler is None:
        named = env.get(toolchain.variable)
        looked = f"{toolchain.variable}={named} is not a program" if named else (
            f"{toolchain.variable} is unset and there is no {' or '.join(toolchain.names)} on PATH"
        )  # fmt: skip
        return (
            f"OOTD_COMPILE=true needs {toolchain.what} to build {toolchain.builds}, and there is none "
            f"({looked}); set OOTD_COMPILE=false, or install one (Debian: {toolchain.packages})"
        )
    failure = _probe(compiler)
    if failure:
        return (
            f"OOTD_COMPILE=true needs {toolchain.what} to build {toolchain.builds}, and {compiler} cannot "
            f"compile against Python's headers ({failure}); set OOTD_COMPILE=false, or install the "
            f"headers too (Debian: {toolchain.packages})"
        )
    return None


def _probe(compiler: str) -> str | None:
    """The compiler's first error line when it cannot compile a file that includes Python.h, else None."""
    with tempfile.TemporaryDirectory(prefix="ootd-compiler-") as folder:
        source = Path(folder) / "probe.c"
        source.write_text(PROBE)
        command = [compiler, "-fsyntax-only", f"-I{_python_include()}", str(source)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as error:
            return str(error)
    if done.returncode == 0:
        return None
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [f"exit status {done.returncode}"])[0]


def _python_include() -> str:
    """Python's header folder, as Triton finds it (Debian's `posix_local` scheme read as `posix_prefix`)."""
    scheme = sysconfig.get_default_scheme()
    return sysconfig.get_paths(scheme="posix_prefix" if scheme == "posix_local" else scheme)["include"]

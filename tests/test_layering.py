"""`ootd/` and `preprocess/` know nothing of RunPod, S3 or HTTP (nor of the worker or storage).

Checked twice: statically (every import statement in the packages, lazy ones inside functions
included), and by importing every module in a fresh interpreter with an import hook that records
which module asked for a forbidden one. Third-party libraries may pull in HTTP clients for their
own hub downloads (huggingface_hub does); only our packages' own imports count.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = (
    "runpod", "boto3", "botocore", "s3transfer", "requests", "urllib3", "httpx", "aiohttp",
    "http", "urllib", "socket", "storage", "worker", "handler",
)  # fmt: skip
PACKAGES = ("ootd", "preprocess")

# Imports every module of the package under a hook: {forbidden name: [importing module, ...]}.
PROBE = """
import importlib, json, pkgutil, sys
FORBIDDEN, PACKAGE = set(sys.argv[1].split(",")), sys.argv[2]
found = {}

class Recorder:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in FORBIDDEN:
            frame = sys._getframe(1)
            while frame and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen")):
                frame = frame.f_back
            importer = frame.f_globals.get("__name__", "") if frame else ""
            if importer.split(".")[0] in (PACKAGE, "core"):
                found.setdefault(top, set()).add(importer)
        return None

sys.meta_path.insert(0, Recorder())
package = importlib.import_module(PACKAGE)
for info in pkgutil.walk_packages(package.__path__, PACKAGE + "."):
    importlib.import_module(info.name)
ours = sorted(m for m in sys.modules if m.split(".")[0] in ("worker", "storage", "handler"))
print(json.dumps({"found": {k: sorted(v) for k, v in found.items()}, "project_modules": ours}))
"""


def _imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", [*PACKAGES, "core"])
def test_no_module_of_the_package_imports_transport_or_worker_code(package: str) -> None:
    files = sorted((REPO_ROOT / package).glob("**/*.py"))
    assert files
    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted(_imported_names(path) & set(FORBIDDEN)) for path in files
    }
    assert {path: names for path, names in offenders.items() if names} == {}


@pytest.mark.parametrize("package", PACKAGES)
def test_importing_the_package_loads_no_transport_or_worker_code(package: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(FORBIDDEN), package],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"found": {}, "project_modules": []}


def test_the_probe_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The hook is not blind: a module of the package that imports `http` is reported."""
    package = tmp_path / "probe_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "bad.py").write_text("import http.client\n")
    result = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(FORBIDDEN), "probe_pkg"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["found"] == {"http": ["probe_pkg.bad"]}

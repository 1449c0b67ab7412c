"""`python -m bench.gpu` at the tiny size on the CPU: every part runs and is reported, a part that
raises is recorded as failed while the run goes on, the gates skip parts past the budget, and
the run needs nothing the GPU machine lacks (runpod, boto3).

No timing is asserted (measurements belong in bench/); the tests check the parts' outcomes, that
every stage, load and memory row is there, that the tables are well formed and that the report
lands on disk; and that the benchmarks' bigger trees (`bench.models`) are what they claim to be.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import gpu
from bench.budget import Run
from bench.gpu_report import STAGES, render
from bench.models import FP16_GROUPS, SD15_UNET, UNET_CONFIGS, parameter_counts, weight_bytes, write_tree

TINY = ["--size", "tiny", "--device", "cpu", "--quick", "--resolution", "64x64"]
ABSENT_ON_GPU_MACHINE = ("runpod", "boto3", "botocore")

# Installed as `sitecustomize` in the run's processes (the benchmark and its warm-up child): those
# packages cannot be found, as on the GPU machine (third-party code that merely looks for them,
# like accelerate's SageMaker support, copes), and each process notes its pid in a file.
_SITECUSTOMIZE = """
import importlib.abc, os, sys
class Without(importlib.abc.MetaPathFinder):
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {absent!r}:
            return None
        return self.finder.find_spec(name, path, target)
    def find_distributions(self, *args, **kwargs):
        finder = getattr(self.finder, "find_distributions", None)
        return finder(*args, **kwargs) if finder else []
sys.meta_path[:] = [Without(finder) for finder in sys.meta_path]
with open(os.environ["BENCH_WITHOUT_MARKER"], "a") as marker:
    marker.write(f"{{os.getpid()}}\\n")
def imported():
    with open(os.environ["BENCH_IMPORTED"], "a") as out:
        out.write(" ".join(sorted({{name.split(".")[0] for name in sys.modules}})) + "\\n")
import atexit
atexit.register(imported)
"""


def _tables(text: str) -> dict[str, list[list[str]]]:
    """Markdown section title -> its table rows (header first, separator dropped), as cells."""
    tables: dict[str, list[list[str]]] = {}
    title = ""
    for line in text.splitlines():
        if line.startswith("## "):
            title = line[3:]
            tables[title] = []
        elif line.startswith("|") and not re.fullmatch(r"\|(---\|)+", line):
            tables[title].append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return tables


def _section(text: str, prefix: str) -> list[list[str]]:
    return next(rows for title, rows in _tables(text).items() if title.startswith(prefix))


def _rows(text: str, prefix: str) -> dict[str, list[str]]:
    """A section's rows by their first cell."""
    return {row[0]: row for row in _section(text, prefix)[1:]}


def _parts(text: str) -> dict[str, tuple[str, str]]:
    """Part -> (status, note), from the parts table."""
    return {row[0]: (row[2], row[6]) for row in _section(text, "Parts")[1:]}


def _estimates(text: str) -> dict[str, str]:
    """Part -> the estimate its gate let through ("" for the ungated and the first measurement)."""
    return {row[0]: row[5] for row in _section(text, "Parts")[1:]}


def _seconds(cell: str) -> float:
    return float(cell)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path, Path]]:
    """One tiny run of every part (compile with dynamo's eager backend, fp32 included), in its own
    process without runpod and boto3. One thread: the tiny networks gain nothing from two, and
    on a shared machine the second one only spins."""
    results, out = tmp_path_factory.mktemp("results"), tmp_path_factory.mktemp("out")
    site = tmp_path_factory.mktemp("without")
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(absent=ABSENT_ON_GPU_MACHINE))
    marker = site / "pids"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BENCH_WITHOUT_MARKER": str(marker),
           "BENCH_IMPORTED": str(site / "imported"),
           "PYTHONPATH": os.pathsep.join([str(site), str(gpu.REPO_ROOT)])}  # fmt: skip
    argv = [*TINY, "--compile-backend", "eager", "--with-fp32", "--budget-s", "3600"]
    argv += ["--results-dir", str(results), "--out", str(out)]
    command = [sys.executable, "-m", "bench.gpu", *argv]
    completed = subprocess.run(
        command, cwd=gpu.REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    yield completed.stdout.removesuffix("\n"), results, out, marker  # print() added that line end


def _in_process(argv: list[str], tmp_path: Path) -> str:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return gpu.main([*TINY, *argv, "--results-dir", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)


def test_every_part_runs_and_every_section_is_a_well_formed_table(run) -> None:
    text = run[0]
    parts = _parts(text)
    # The order: what only a GPU tells first, the fp32 tree last and only when asked.
    in_order = ["requests", "child", "cold-load", "compile", "encoding", "weights", "fp32"]
    assert list(parts) == ["write-tree", "load", *in_order]
    assert {name: status for name, (status, _) in parts.items()} == dict.fromkeys(parts, "done")
    # Every gate after the requests part estimates from the request time measured in this run.
    estimates = _estimates(text)
    ungated = [name for name, estimate in estimates.items() if not estimate]
    assert ungated == ["write-tree", "load", "requests"]
    for name in ("child", "compile"):
        assert re.search(r"3 requests at \d+\.\d s a request, measured", estimates[name]), estimates[name]
    assert "Status: ended after" in text and f": {len(parts)} done." in text
    tables = _tables(text)
    for title, rows in tables.items():
        assert len(rows) >= 2, title
        assert {len(row) for row in rows} == {len(rows[0])}, f"ragged table in {title}"

    setup = _rows(text, "Setup")
    for key in ("device", "torch", "diffusers", "transformers", "onnxruntime", "parsing providers", "tree"):
        assert setup[key][1], key
    assert "CPUExecutionProvider" in setup["parsing providers"][1]
    assert setup["model types resident"][1] == "hd,dc"

    load = _rows(text, "Load")
    assert _seconds(load["write tiny tree (hd fp16 + preprocessing)"][1]) > 0
    assert _seconds(load["load hd fp16 files (just written: in the page cache)"][1]) > 0
    assert _seconds(load["build dc UNets in memory"][1]) > 0
    assert "drop_caches not tried" in load["cold load hd fp16 files"][2]  # never machine-wide here
    assert _seconds(load["cold load hd fp32 files"][1]) > 0
    assert re.fullmatch(r"\S+ GB -> \S+ GB in [1-9]\d* files", load["builder.to_fp16 on that tree"][2])

    first = _rows(text, "First request")
    cases = ["first request in this process, no warm-up (new garment)", "child: warm_up()"]
    cases += ["child: first request after warm-up (new garment)", "child: second request (new garment)"]
    for case in cases:
        assert _seconds(first[case][1]) > 0, case

    compiled = _rows(text, "Compile")
    assert re.fullmatch(
        r"backend eager; dynamo captured [1-9]\d* graph\(s\)",
        compiled["first compiled request (compile included)"][2],
    )
    for row in (
        "eager request (new garment)",
        "second compiled request",
        "mean step, eager",
        "mean step, compiled",
    ):
        assert _seconds(compiled[row][1]) > 0, row
    assert set(_rows(text, "Output encoding")) == {"png", "jpeg", "webp"}
    assert set(_rows(text, "Weights")) == {"hd", "hd,dc"}


def test_requests_run_with_the_garment_cache_filled_and_count_non_finite_outputs(run) -> None:
    text = run[0]
    requests = _section(text, "Requests")
    header = requests[0]
    assert header[4 : 4 + len(STAGES)] == [label for _, label in STAGES]
    rows = requests[1:]
    assert [(row[0], row[1], row[2]) for row in rows] == [
        ("2", "1", "new (miss)"), ("2", "1", "cached (hit)"), ("2", "4", "new (miss)"),
        ("1", "1", "new (miss)"), ("1", "4", "new (miss)"),
    ]  # fmt: skip
    column = {
        name: header.index(name)
        for name in ("CLIP", "garment UNet", "s/request", "s/sample", "non-finite outputs")
    }
    for row in rows:
        assert row[3] == "1"  # --quick
        assert all(_seconds(cell) >= 0 for cell in row[4 : 4 + len(STAGES)]), row
        per_request, per_sample = _seconds(row[column["s/request"]]), _seconds(row[column["s/sample"]])
        assert per_sample == pytest.approx(per_request / int(row[1]), abs=2e-3)
        assert row[column["non-finite outputs"]] == f"0 of {row[1]} images"
        assert row[-4:-1] == ["n/a"] * 3  # no CUDA: no device memory figures
        hit = row[2] == "cached (hit)"
        # A hit takes the garment's conditioning from the cache: no CLIP, no garment UNet.
        assert (_seconds(row[column["CLIP"]]) == 0) == hit, row
        assert (_seconds(row[column["garment UNet"]]) == 0) == hit, row

    memory = _rows(text, "Memory (GiB)")
    filled = [when for when in memory if when.startswith("garment cache filled: ")]
    assert len(filled) == 1
    entries = int(re.search(r"filled: (\d+) entries", filled[0]).group(1))
    assert entries > gpu.CACHE_FILL_MAX  # the first request's entry and every fill (tiny ones never evict)
    assert filled[0].endswith(f"(not full: the fill stops after {gpu.CACHE_FILL_MAX} garments)")


def test_the_memory_budget_counts_the_parsing_arenas_at_their_limit(run) -> None:
    from preprocess.parsing import cuda_provider_options

    budget = _section(run[0], "Memory budget")[1:]
    arenas = next(row for row in budget if row[0].startswith("parsing arenas"))
    per_session = int(cuda_provider_options()["gpu_mem_limit"])
    assert arenas[0] == f"parsing arenas (2 sessions x {per_session / gpu.GIB:.2f} GiB)"
    assert _seconds(arenas[1]) == pytest.approx(2 * per_session / gpu.GIB, abs=0.01)
    assert "CPU provider here" in arenas[2]


def test_report_is_written_to_results_and_out(run) -> None:
    text, results, out, _ = run
    written = sorted(results.glob("gpu-*-cpu-*.md"))
    assert len(written) == 1
    assert written[0].read_text() == text
    assert (out / written[0].name).read_text() == text


def test_the_run_and_its_warm_up_child_need_no_runpod_or_boto3(run) -> None:
    """The GPU machines have torch, transformers, onnxruntime, onnx and requests but not runpod
    or boto3: the fixture's run, every part done, had them hidden in both its processes."""
    text, _, _, marker = run
    pids = marker.read_text().split()
    assert len(set(pids)) == 2  # the benchmark and its warm-up child
    assert "child" in _parts(text) and _parts(text)["child"][0] == "done"


GPU_MACHINE_IMPORTS = frozenset({
    "accelerate", "anyio", "certifi", "charset_normalizer", "colorama", "cv2", "cython_runtime", "filelock",
    "fsspec", "functorch", "google", "h11", "hf_xet", "httpcore", "httpx", "huggingface_hub", "idna",
    "jinja2", "markupsafe", "ml_dtypes", "mpmath", "networkx", "numpy", "onnx", "onnxruntime", "packaging",
    "PIL", "psutil", "regex", "requests", "safetensors", "sympy", "tokenizers", "torch", "torchgen", "tqdm",
    "transformers", "triton", "typing_extensions", "urllib3", "yaml",
})  # fmt: skip
"""Import names of packages the GPU machine has (the device tool's package list for its H200
kind, bench/README) that a run may load; torchgen and functorch come with torch."""
CARRIED_WHEELS = frozenset({"diffusers"})
"""What bench/README's device command carries as wheels in `.whl`."""
HUB_2_HTTP = frozenset({"httpx2", "httpcore2", "truststore", "brotli", "backports"})
"""huggingface_hub 2.x's HTTP client and what it loads, here only: the machine's hub 1.33 uses httpx."""
PROJECT_PACKAGES = frozenset({"bench", "builder", "core", "ootd", "preprocess", "tiny_checkpoints", "worker"})


def test_every_module_the_run_imports_is_on_the_gpu_machine_or_carried(run) -> None:
    """What the fixture's two processes had in `sys.modules` at exit, outside the standard
    library and the project: each on the GPU machine or in the carried wheels."""
    loaded = (run[3].parent / "imported").read_text().splitlines()
    assert len(loaded) == 2  # the benchmark and its warm-up child
    for line in loaded:
        names = {name for name in line.split() if not name.startswith("_")}
        third_party = names - set(sys.stdlib_module_names) - PROJECT_PACKAGES - {"sitecustomize"}
        assert "diffusers" in third_party and "onnxruntime" in third_party
        assert sorted(third_party - GPU_MACHINE_IMPORTS - CARRIED_WHEELS - HUB_2_HTTP) == []


def test_a_part_that_raises_is_recorded_failed_and_the_later_parts_still_run(tmp_path: Path) -> None:
    """Two real failures: 5 samples are more than the pipeline allows (one configuration fails,
    so the requests part fails after the others ran) and a torch.compile backend that does not
    exist (the compile part fails); the weights part after them still runs."""
    argv = ["--parts", "requests,compile,weights", "--scales", "2", "--samples", "1,5"]
    text = _in_process([*argv, "--compile-backend", "no-such-backend", "--budget-s", "3600"], tmp_path)
    parts = _parts(text)
    assert parts["requests"][0] == "failed"
    assert re.fullmatch(
        r"SomeRequestsFailed: 1 of 3 configurations failed, first: ValueError: .*num_images_per_prompt.*",
        parts["requests"][1],
    )
    assert parts["compile"][0] == "failed"
    assert parts["compile"][1].startswith("InvalidBackend: Invalid backend: 'no-such-backend'")
    assert parts["weights"][0] == "done"
    for name in ("child", "cold-load", "encoding"):
        assert parts[name] == ("skipped", "not asked (--parts)")
    assert parts["fp32"] == ("skipped", "not asked (--with-fp32 runs it)")
    assert "Status: ended after" in text
    assert ": 3 done, 2 failed (requests, compile), 4 skipped (child, cold-load, encoding, fp32)." in text

    rows = _section(text, "Requests")[1:]
    assert [(row[1], row[2], row[3]) for row in rows] == [
        ("1", "new (miss)", "1"),
        ("1", "cached (hit)", "1"),
        ("5", "new (miss)", "0"),
    ]
    failed = rows[-1]
    assert failed[4 : 4 + len(STAGES) + 3] == ["failed"] * (len(STAGES) + 3)
    assert failed[-1].startswith("failed after 0 of 1 reps: ValueError:")
    compiled = _rows(text, "Compile")
    assert list(compiled) == ["eager request (new garment)"]  # nothing claims a compiled request


def test_non_finite_outputs_are_reported_per_row_and_do_not_fail_the_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NaN injected at the VAE decoder's output (a forward hook, as tests/test_nonfinite.py does)
    of the float16 pipeline the GPU runs, on chosen float16 decodes: the pipeline's float32 retry
    mends some, and one request it refuses (`NonFiniteOutputError`). Each request row counts its
    non-finite images, retries and refusals; the part ends done and says so in its note."""
    import torch

    fp16_decodes: list[int] = []  # the float16 decoder calls so far (one per image)
    poisoned = {2: "float16", 3: "both", 5: "float16"}  # the decode call -> which dtypes get NaN

    def poison(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if args[0].dtype == torch.float16:
            fp16_decodes.append(len(fp16_decodes) + 1)
            return output * float("nan") if fp16_decodes[-1] in poisoned else output
        return output * float("nan") if poisoned.get(fp16_decodes[-1]) == "both" else output

    load_timed = gpu.load_timed

    def load_poisoned(*args, **kwargs):
        pipelines, seconds = load_timed(*args, **kwargs)
        for pipe in pipelines.values():
            pipe.vae.decoder.register_forward_hook(poison)
        return pipelines, seconds

    monkeypatch.setattr(gpu, "load_timed", load_poisoned)
    argv = ["--parts", "requests", "--dtype", "float16", "--scales", "2", "--samples", "1,2"]
    text = _in_process([*argv, "--budget-s", "3600"], tmp_path)

    # decode 1: the first request; 2: the miss row; 3: the hit row; 4, 5: the 2-sample row
    assert fp16_decodes == [1, 2, 3, 4, 5]
    requests = _section(text, "Requests")
    column = requests[0].index("non-finite outputs")
    rows = {(row[1], row[2]): row for row in requests[1:]}
    assert rows["1", "new (miss)"][column] == "0 of 1 images; 1 decoded again in float32"
    refused = rows["1", "cached (hit)"]
    assert refused[column] == (
        "1 of 1 images; 1 request(s) refused: NonFiniteOutputError (VAE decode); 1 decoded again in float32"
    )
    assert refused[4 : 4 + len(STAGES) + 2] == ["non-finite"] * (len(STAGES) + 2)  # no time claimed
    assert rows["2", "new (miss)"][column] == "0 of 2 images; 1 decoded again in float32"
    status, note = _parts(text)["requests"]
    assert status == "done"
    assert note.endswith(
        "; non-finite outputs: 1 of 4 images; 1 request(s) refused: NonFiniteOutputError (VAE decode); "
        "3 decoded again in float32"
    )


def test_the_garment_cache_fill_is_gated_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's clock jumps past the budget when the first request decodes (the fill decodes
    nothing): the fill puts no garment in, says why, and the configurations are skipped."""
    import functools
    import time

    offset = [0.0]
    monkeypatch.setattr(gpu, "Run", functools.partial(Run, clock=lambda: time.perf_counter() + offset[0]))
    load_timed = gpu.load_timed

    def load_with_a_late_decoder(*args, **kwargs):
        pipelines, seconds = load_timed(*args, **kwargs)
        for pipe in pipelines.values():
            pipe.vae.decoder.register_forward_hook(lambda *_: offset.__setitem__(0, 1e6))
        return pipelines, seconds

    monkeypatch.setattr(gpu, "load_timed", load_with_a_late_decoder)
    text = _in_process(
        ["--parts", "requests", "--scales", "2", "--samples", "1", "--budget-s", "3600"], tmp_path
    )
    filled = next(when for when in _rows(text, "Memory (GiB)") if when.startswith("garment cache filled"))
    assert re.fullmatch(
        r"garment cache filled: 1 entries, .* \(not full: the budget stopped the fill after 0 garments: "
        r"needs ~\d+ s \(\S+ s a request, measured\) \+ \d+ s kept for the later parts; 0 s left .*\)",
        filled,
    ), filled
    assert _parts(text)["requests"][0] == "done"
    assert {row[3] for row in _section(text, "Requests")[1:]} == {"0"}  # every configuration skipped


def test_parts_past_a_tiny_budget_are_skipped_with_the_reason(tmp_path: Path) -> None:
    text = _in_process(["--budget-s", "0.001", "--with-fp32"], tmp_path)
    parts = _parts(text)
    assert parts["write-tree"][0] == parts["load"][0] == "done"  # the set-up always runs
    assert parts["requests"][0] == "skipped"
    assert re.fullmatch(r"the run was at \d+ s, past its 0 s budget", parts["requests"][1])
    for name in ("child", "cold-load", "compile", "encoding", "weights", "fp32"):
        status, note = parts[name]
        assert status == "skipped", name
        assert re.fullmatch(r"needs ~\d+ s \(.+\); 0 s left of the 0 s budget at \d+ s", note), note
    assert "10 s a request, assumed: none measured" in parts["child"][1]
    assert ": 2 done, 7 skipped (requests, child, cold-load, compile, encoding, weights, fp32)." in text
    assert not any(title.startswith(("Requests", "Compile", "Weights")) for title in _tables(text))


def test_a_resolution_the_pipeline_refuses_is_refused_before_anything_runs(capsys) -> None:
    with pytest.raises(SystemExit):
        gpu.parse_args(["--resolution", "128x96"])
    assert "--resolution: each side a multiple of 64 in 64..2048" in capsys.readouterr().err
    assert (gpu.parse_args(["--resolution", "128x64"]).height, gpu.parse_args([]).width) == (128, 768)


def test_the_fp16_tree_is_written_in_builder_to_fp16s_form(tmp_path: Path) -> None:
    """What `write_tree(fp16=True)` leaves is what the image's conversion leaves: converting it
    again changes nothing, UNets and VAE are float16 safetensors, the text encoder float32."""
    from builder.to_fp16 import convert_tree, parts, safetensors_dtypes
    from ootd import layout

    root = write_tree(tmp_path / "tree", "tiny", fp16=True)
    again = convert_tree(root)
    assert again.files and {item.action for item in again.files} == {"unchanged"}
    for part in parts():
        present = layout.present_form(root, part.listed)
        assert present == root / part.target, part.listed
        expected = {"F16"} if part.dtype is not None else {"F32"}
        assert safetensors_dtypes(present) & {"F16", "F32"} == expected, part.listed


def test_weight_bytes_follow_the_published_parameter_counts() -> None:
    counts = parameter_counts()
    # SD-1.5 UNet 859.5 M, SD VAE 83.7 M, CLIP ViT-L/14 (both towers) 427.6 M, text encoder 123.1 M.
    assert counts["unet_garm"] == pytest.approx(859.52e6, rel=1e-4)
    assert counts["unet_vton"] - counts["unet_garm"] == 4 * 320 * 3 * 3  # 4 more input channels
    assert counts["vae"] == pytest.approx(83.65e6, rel=1e-3)
    assert counts["clip"] == pytest.approx(427.62e6, rel=1e-3)
    assert counts["text_encoder"] == pytest.approx(123.06e6, rel=1e-3)
    hd, both = weight_bytes(counts, ("hd",)), weight_bytes(counts, ("hd", "dc"))
    unets = 4 * (counts["unet_garm"] + counts["unet_vton"])
    assert both["fp32"] - hd["fp32"] == unets
    assert both["fp16"] - hd["fp16"] == unets // 2
    assert hd["fp32"] - hd["fp16"] == unets // 2 + 2 * counts["vae"]


def test_mid_tree_halves_the_diffusion_widths_and_keeps_the_rest_published() -> None:
    full, mid = parameter_counts("full"), parameter_counts("mid")
    # Half the channels: a quarter of the convolution and attention weights (the benchmarks'
    # CPU-sized stand-in for the real proportions inside a job).
    assert mid["unet_vton"] / full["unet_vton"] == pytest.approx(0.256, abs=0.002)
    assert mid["vae"] / full["vae"] == pytest.approx(0.25, abs=0.002)
    for group in ("clip", "text_encoder", "pose", "parsing"):
        assert mid[group] == full[group], group
    same_structure = {key: value for key, value in UNET_CONFIGS["mid"].items() if key != "block_out_channels"}
    assert same_structure == {key: value for key, value in SD15_UNET.items() if key != "block_out_channels"}


def test_tree_sizes_are_checked_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size must be one of tiny, mid, full"):
        write_tree(tmp_path / "tree", "huge")
    assert not (tmp_path / "tree").exists()


def test_out_of_memory_rows_render_as_oom() -> None:
    report = {
        "setup": {"device": "x", "date": "d"},
        "run": Run(60.0, log=lambda _message: None),
        "load": {}, "memory": [], "budget": [], "first": {}, "compile": {}, "encoding": {},
        "request": {"height": 1024, "width": 768, "steps": 20},
        "configs": [{"scale": 2.0, "samples": 4, "garment": "new (miss)", "planned": 3, "reps": 0,
                     "oom": True, "peak_allocated": 70.0}],
    }  # fmt: skip
    row = _section(render(report), "Requests")[1]
    assert row[:4] == ["2", "4", "new (miss)", "0"]
    assert row[4 : 4 + len(STAGES) + 3] == ["OOM"] * (len(STAGES) + 3)
    assert row[-4:] == ["70.00", "n/a", "n/a", "out of memory after 0 of 3 reps"]


def test_non_finite_images_are_counted_per_image() -> None:
    images = np.zeros((4, 8, 6, 3), np.float32)
    assert gpu.non_finite_images(images) == 0
    images[1, 2, 3, 0] = np.nan
    images[3, 0, 0, 2] = np.inf  # a float16 overflow
    images[3, 1, 0, 2] = -np.inf  # the same image: counted once
    assert gpu.non_finite_images(images) == 2


def test_page_cache_probe_sees_a_file_just_read(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\1" * (1 << 20))
    path.read_bytes()
    fraction = gpu.resident_fraction([path])
    if fraction is None:
        pytest.skip("mincore is not available here")
    assert fraction > 0.5
    dropped = gpu.drop_page_cache(tmp_path, system_wide=False)
    assert dropped["drop_caches"] == "not tried"
    assert dropped["bytes"] == 1 << 20


def test_fp16_bytes_count_what_builder_to_fp16_casts() -> None:
    import torch

    from builder.to_fp16 import parts
    from ootd import layout

    halved = {part.listed for part in parts() if part.dtype == torch.float16}
    unets = {part.listed for part in parts() if part.listed.startswith(f"{layout.OOTD_DIR}/ootd_")}
    assert unets <= halved and halved - unets == {layout.VAE_WEIGHTS}
    assert set(FP16_GROUPS) == {"unet_garm", "unet_vton", "vae"}


def test_real_size_preprocessing_reports_the_tiny_trees_person(tiny_root: Path, tmp_path: Path) -> None:
    """The mid and full trees' pose and parsing networks do the published arithmetic yet find the
    person the tiny ones find, so a benchmarked job reaches the mask, the diffusion and the caches
    instead of ending at "no person detected"."""
    from bench.models import HOUSE_PHOTO, write_full_preprocess
    from preprocess import Preprocessor

    shutil.copytree(tiny_root, tmp_path / "tree")
    write_full_preprocess(tmp_path / "tree")
    person = Image.open(HOUSE_PHOTO)
    tiny = Preprocessor.from_checkpoints(tiny_root, device="cpu")(person)
    full = Preprocessor.from_checkpoints(tmp_path / "tree", device="cpu")(person)
    np.testing.assert_allclose(full.keypoints, tiny.keypoints)
    # The prior is the tiny graphs' argmax at the networks' output size; upsampling one-hot logits
    # instead of the tiny ones' moves class boundaries by a few pixels, no more.
    assert set(np.unique(full.parse)) == set(np.unique(tiny.parse))
    assert (full.parse == tiny.parse).mean() > 0.9
    full_mask, tiny_mask = np.asarray(full.mask) > 0, np.asarray(tiny.mask) > 0
    assert (full_mask & tiny_mask).sum() / (full_mask | tiny_mask).sum() > 0.9

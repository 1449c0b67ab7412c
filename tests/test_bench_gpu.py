"""`python -m bench.gpu` at the tiny size on the CPU: it runs end to end and reports every part.

No timing is asserted (measurements belong in bench/); the tests check that every stage, load
and memory row is there, that the tables are well formed and that the report lands on disk; and
that the benchmarks' bigger trees (`bench.models`) are what they claim to be.
"""

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
from bench.models import FP16_GROUPS, SD15_UNET, UNET_CONFIGS, parameter_counts, weight_bytes, write_tree


def _tables(text: str) -> dict[str, list[list[str]]]:
    """Markdown section title -> its table rows (header first, separator dropped), as cells."""
    tables: dict[str, list[list[str]]] = {}
    title = ""
    for line in text.splitlines():
        if line.startswith("## "):
            title = line[3:]
            tables[title] = []
        elif line.startswith("|") and not re.fullmatch(r"\|(---\|)+", line):
            tables[title].append([cell.strip() for cell in line.strip("|").split("|")])
    return tables


def _number(cell: str) -> float:
    return float(cell)


def _section(text: str, prefix: str) -> list[list[str]]:
    return next(rows for title, rows in _tables(text).items() if title.startswith(prefix))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """One tiny run for the module. One thread (here and in the warm-up child): the tiny networks
    gain nothing from two, and on a shared machine the second one only spins."""
    import torch

    results, out = tmp_path_factory.mktemp("results"), tmp_path_factory.mktemp("out")
    argv = ["--size", "tiny", "--device", "cpu", "--quick", "--resolution", "64x64"]
    argv += ["--results-dir", str(results), "--out", str(out)]
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        try:
            yield gpu.main(argv), results, out
        finally:
            torch.set_num_threads(threads)


def test_tiny_run_prints_every_section_as_a_well_formed_table(run, capsys) -> None:
    text, _, _ = run
    assert "Status: complete." in text
    tables = _tables(text)
    assert list(tables)[:2] == ["Setup", "Weights (bytes the worker reads, from the real parameter counts)"]
    for title, rows in tables.items():
        assert len(rows) >= 2, title
        assert {len(row) for row in rows} == {len(rows[0])}, f"ragged table in {title}"

    setup = {row[0]: row[1] for row in tables["Setup"][1:]}
    for key in ("device", "torch", "diffusers", "transformers", "onnxruntime", "parsing providers"):
        assert setup[key], key
    assert "CPUExecutionProvider" in setup["parsing providers"]
    assert setup["model types resident"] == "hd,dc"

    requests = _section(text, "Requests")
    header = requests[0]
    for stage in ("pose", "parsing", "CLIP", "VAE encodes (3)", "garment UNet", "mean step", "VAE decode"):
        assert stage in header
    assert [(row[0], row[1]) for row in requests[1:]] == [("2", "1"), ("2", "4"), ("1", "1"), ("1", "4")]
    per_request, per_sample = header.index("s/request"), header.index("s/sample")
    for row in requests[1:]:
        stage_cells = row[3:per_request]
        assert all(_number(cell) >= 0 for cell in stage_cells), row
        assert _number(row[per_sample]) == pytest.approx(_number(row[per_request]) / int(row[1]), abs=2e-3)
        assert row[-3:] == ["n/a"] * 3  # no CUDA: no device memory figures

    load = {row[0]: row for row in _section(text, "Load")[1:]}
    assert _number(load["cold load hd fp32 (diffusion)"][1]) > 0
    assert "drop_caches not tried" in load["cold load hd fp32 (diffusion)"][2]  # never machine-wide here
    assert _number(load["build dc UNets in memory"][1]) > 0
    first = {row[0]: row for row in _section(text, "First")[1:]}
    assert _number(first["first request, fresh process, no warm-up"][1]) > 0
    assert _number(first["second request"][1]) > 0
    assert _number(first["child: warm_up()"][1]) > 0  # worker.warmup, in a fresh process
    assert _number(first["first request after warm-up"][1]) > 0
    miss, hit = first["garment cache: miss (whole request)"], first["garment cache: hit (same garment again)"]
    assert _number(miss[1]) > 0 and _number(hit[1]) > 0
    assert hit[2].endswith("x the miss")
    ratio = _number(hit[1]) / _number(miss[1])
    assert _number(hit[2].removesuffix("x the miss")) == pytest.approx(ratio, abs=0.02)
    for output_format in ("png", "jpeg", "webp"):
        assert _number(first[f"4 x 768x1024 {output_format}, parallel encoding"][1]) > 0
    fp16 = load["cold load hd fp16 (diffusion)"]
    assert _number(fp16[1]) > 0
    assert _number(load["fp16 conversion (builder.to_fp16)"][1]) > 0


def test_report_is_written_to_results_and_out(run) -> None:
    text, results, out = run
    written = sorted(results.glob("gpu-*-cpu-*.md"))
    assert len(written) == 1
    assert written[0].read_text() == text
    assert (out / written[0].name).read_text() == text


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
        "status": "complete",
        "load": {},
        "resident": None,
        "request": {"height": 1024, "width": 768, "steps": 20},
        "configs": [{"scale": 2.0, "samples": 4, "reps": 0, "oom": True, "peak_allocated": 70.0}],
        "first": {},
        "parts": gpu.Parts(),
    }
    row = _section(gpu.render(report), "Requests")[1]
    assert row[:3] == ["2", "4", "0"]
    assert row[3 : 3 + len(gpu.STAGES) + 2] == ["OOM"] * (len(gpu.STAGES) + 2)
    assert row[-3] == "70.00"


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


ABSENT_ON_GPU_MACHINE = ("runpod", "boto3", "botocore")

# Run in a fresh interpreter where those packages cannot be found, as on the GPU machine
# (third-party code that merely looks for them, like accelerate's SageMaker support, copes).
_IMPORT_WITHOUT = """
import importlib.abc, sys
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
import bench.bench_encoding, bench.gpu, bench.models, builder.to_fp16
import preprocess.preprocessor, tiny_checkpoints
import ootd.garment_cache, worker.encoding, worker.warmup
assert not any(name.split(".")[0] in {absent!r} for name in sys.modules)
print("imported")
"""


def test_benchmark_imports_nothing_the_gpu_machine_lacks() -> None:
    """The GPU machines have torch, transformers, onnxruntime, onnx and requests but not runpod
    or boto3: everything bench.gpu loads, including the worker's encoder, must do without them."""
    code = _IMPORT_WITHOUT.format(absent=ABSENT_ON_GPU_MACHINE)
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, cwd=gpu.REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "imported"


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

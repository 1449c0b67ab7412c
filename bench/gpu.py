"""`python -m bench.gpu`: the worker's real work on one device, measured in one command.

No download: every network is built at its published full size with random weights
(`bench.models`), written in the published layout to a temporary folder and read back by the
production loaders (`ootd.load_pipelines`, `preprocess.Preprocessor.from_checkpoints`), so load
times are real. Then, in this order, with the elapsed time of each part printed as it ends:

1. weights: bytes fp32 vs fp16 for `hd` and `hd,dc` (parameter counts on the meta device);
2. write: one model type's diffusion tree (fp32, hub formats) + the preprocessing networks;
3. cold load of that model type from the fp32 files, page cache dropped first;
4. fp16: `builder.to_fp16` rewrites the tree, cold load again (skipped while it is not merged);
5. the other model type's UNets built in memory: both types resident, as in production;
6. requests (hd): the first in a fresh process, the second, then guidance 2.0/1.0 x 1/4
   samples with time per stage and peak GPU memory; out of memory is recorded, not fatal;
7. compile (`--compile`, on by default on CUDA): `ootd.compile.compile_pipeline` (what
   `OOTD_COMPILE` does), then two requests: the compile time (first compiled request minus the
   eager second request) and the compiled vs eager mean step (skipped when the run is late);
8. warm-up: a fresh child process loads, runs `worker.warmup.warm_up`, then its first request
   (skipped while it is not merged, or when the run is short of time).

It prints one markdown report (a table per section) and writes it to `bench/results/` (and to
`--out DIR`). `--size tiny --device cpu` runs the same code on the tiny tree (the test suite
does); bench/README.md gives the GPU command and the expected time of each part.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
GARMENT_PHOTO = REPO_ROOT / "assets" / "garments" / "0_tshirt.png"
GIB = 2**30
GB = 1e9
OUTPUT_FORMAT = "png"  # the worker's default output_format
MATRIX_LATE_S = 180.0
"""Past this many seconds before the request matrix (a slow disk), it runs one repetition."""
SOFT_LIMIT_S = 300.0
"""The warm-up child (the last part) is skipped once this much time has gone: the whole run must
stay under 6 minutes on an H100 (the device tool's one call is 10 minutes, machine start aside)."""
COMPILE_LATE_S = 150.0
"""The compile part (one to two minutes for a full-size UNet on an H100) is skipped past this."""
CHILD_DEADLINE_S = 420.0
"""The warm-up child is killed (and reported as failed) at this point of the run."""

RUN_DEFAULTS: dict[str, dict[str, Any]] = {
    "full": {"resolution": (1024, 768), "steps": 20, "reps": 3, "quick_reps": 1,
             "networks": "published architectures, full size, random weights"},
    "mid": {"resolution": (512, 384), "steps": 20, "reps": 1, "quick_reps": 1,
            "networks": "published architectures, UNets and VAE at half width, random weights"},
    "tiny": {"resolution": (128, 128), "steps": 2, "reps": 2, "quick_reps": 1, "networks": "tiny"},
}  # fmt: skip
"""Per tree size (`bench.models.SIZES`): what a run measures unless told otherwise, and what the
report calls its networks."""
PEAK_KEYS = ("peak_allocated", "peak_reserved", "peak_device_used")
SCALES = (2.0, 1.0)
SAMPLES = (1, 4)
STAGES: tuple[tuple[str, str], ...] = (
    ("pose", "pose"),
    ("parsing", "parsing"),
    ("clip", "CLIP"),
    ("vae_encode", "VAE encodes (3)"),
    ("garment_unet", "garment UNet"),
    ("step", "mean step"),
    ("vae_decode", "VAE decode"),
    ("encode", f"{OUTPUT_FORMAT} encoding"),
)


# ----------------------------------------------------------------------------------- helpers
def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the report."""
    print(f"[bench.gpu] {message}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Parts:
    """Elapsed (wall) and this process's CPU seconds per part of the run, logged as each ends.

    On a shared CPU machine the wall clock grows with other load; the CPU time tracks the work.
    """

    def __init__(self, on_end: Callable[[str], None] | None = None) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.on_end = on_end

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        start, cpu_start = time.perf_counter(), time.process_time()
        log(f"{name} ...")
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - start
            self.cpu_seconds[name] = time.process_time() - cpu_start
            log(
                f"{name}: {self.seconds[name]:.1f} s, CPU {self.cpu_seconds[name]:.1f} s "
                f"(run so far {self.elapsed():.1f} s)"
            )
            if self.on_end is not None:
                self.on_end(name)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_out_of_memory(error: BaseException) -> bool:
    """torch's OOM, or an allocator failure surfacing as another exception type (onnxruntime's)."""
    text = str(error).lower()
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return "out of memory" in text or "failed to allocate" in text


# ------------------------------------------------------------------------------- page cache
def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    int_ = ctypes.c_int
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, int_, int_, int_, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    return libc


def resident_fraction(files: list[Path]) -> float | None:
    """Share of the files' pages in the page cache (mincore), None where that cannot be asked."""
    if sys.platform != "linux":
        return None
    try:
        libc = _libc()
        page = os.sysconf("SC_PAGE_SIZE")
        resident = total = 0
        for path in files:
            size = path.stat().st_size
            if size == 0:
                continue
            pages = (size + page - 1) // page
            with open(path, "rb") as handle:
                address = libc.mmap(None, size, 1, 1, handle.fileno(), 0)  # PROT_READ, MAP_SHARED
            if address in (None, ctypes.c_void_p(-1).value):
                return None
            try:
                vector = (ctypes.c_ubyte * pages)()
                if libc.mincore(ctypes.c_void_p(address), size, vector) != 0:
                    return None
                resident += sum(byte & 1 for byte in vector)
            finally:
                libc.munmap(ctypes.c_void_p(address), size)
            total += pages
        return resident / total if total else None
    except (OSError, AttributeError):
        return None


def drop_page_cache(root: Path, system_wide: bool) -> dict[str, Any]:
    """Evict the tree's files from the page cache so the next load reads the disk.

    fsync + fadvise(DONTNEED) per file needs no privileges; /proc/sys/vm/drop_caches needs root
    and a kernel that allows it, and empties the cache of the whole machine, so it is only tried
    when `system_wide` (a run on a GPU machine of one's own; never on a shared CPU machine).
    What was tried and how much stayed resident is returned, so the report can say honestly
    whether the "cold" load was cold.
    """
    files = [path for path in root.rglob("*") if path.is_file()]
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    dropped = "not tried"
    if system_wide:
        try:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            dropped = "yes"
        except OSError as error:
            dropped = f"refused ({error.strerror or type(error).__name__})"
    return {
        "drop_caches": dropped,
        "resident_after_drop": resident_fraction(files),
        "bytes": sum(path.stat().st_size for path in files),
    }


def filesystem_of(path: Path) -> str:
    """The mount type holding `path` (tmpfs would make every load a warm load)."""
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and str(path.resolve()).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind


# ---------------------------------------------------------------------------- device memory
class MemorySampler:
    """Peak of the device's used memory as the driver reports it (all processes' allocations:
    torch's cache, cuBLAS/cuDNN workspaces, onnxruntime's CUDA arena when it has one)."""

    def __init__(self, device: torch.device, interval: float = 0.005) -> None:
        self.device, self.interval = device, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def used(self) -> int:
        free, total = torch.cuda.mem_get_info(self.device)
        return total - free

    def __enter__(self) -> MemorySampler:
        if self.device.type == "cuda":
            self.peak = self.used()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.used())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.peak = max(self.peak, self.used())


def memory_snapshot(device: torch.device) -> dict[str, float] | None:
    """torch's current allocated/reserved and the driver's used memory, GiB."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return {
        "allocated": torch.cuda.memory_allocated(device) / GIB,
        "reserved": torch.cuda.memory_reserved(device) / GIB,
        "device_used": (total - free) / GIB,
        "device_total": total / GIB,
    }


# ---------------------------------------------------------------------------------- requests
@dataclass
class Request:
    """One try-on as the worker runs it: preprocessing, diffusion, output encoding."""

    height: int
    width: int
    steps: int
    scale: float
    samples: int


@dataclass
class Timing:
    stages: dict[str, float] = field(default_factory=dict)
    total: float = 0.0
    pose_outcome: str = ""


@contextlib.contextmanager
def timed_methods(targets: list[tuple[Any, str, str]], times: dict[str, float], device: torch.device):
    """Wrap `obj.name` (bound methods) so each call adds its synchronised wall time to
    `times[key]`; the instance attributes are removed again afterwards (the class methods return)."""

    def wrap(function: Callable, key: str) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            sync(device)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                sync(device)
                times[key] = times.get(key, 0.0) + time.perf_counter() - start
                times[f"{key}_end"] = time.perf_counter()

        return timed

    try:
        for obj, name, key in targets:
            object.__setattr__(obj, name, wrap(getattr(obj, name), key))
        yield
    finally:
        for obj, name, _ in targets:
            with contextlib.suppress(AttributeError):
                object.__delattr__(obj, name)


def pictures() -> tuple[Image.Image, Image.Image]:
    """The house model photo and the example garment that ship with the worker."""
    from bench.models import HOUSE_PHOTO

    return Image.open(HOUSE_PHOTO).convert("RGB"), Image.open(GARMENT_PHOTO).convert("RGB")


def rectangle_mask(width: int, height: int) -> Image.Image:
    """The torso box: the fixed person the random-weight pose and parsing report is not the photo's."""
    mask = np.zeros((height, width), np.uint8)
    mask[height // 5 : 3 * height // 4, width // 5 : 4 * width // 5] = 255
    return Image.fromarray(mask, "L")


def run_request(pipe: Any, preprocessor: Any, request: Request, device: torch.device) -> Timing:
    """Time one request stage by stage (every stage ends with a device synchronisation)."""
    from preprocess import PreprocessError
    from preprocess.preprocessor import parse_input
    from worker.encoding import encode_image

    person, garment = pictures()
    timing = Timing()
    times = timing.stages
    sync(device)
    start = time.perf_counter()

    small = parse_input(person)  # what `Preprocessor.__call__` gives pose and parsing
    stage = time.perf_counter()
    try:
        preprocessor.pose(small)
        timing.pose_outcome = "found a person"
    except PreprocessError:
        timing.pose_outcome = "no person (random weights)"
    sync(device)
    times["pose"] = time.perf_counter() - stage
    stage = time.perf_counter()
    preprocessor.parser(small)
    times["parsing"] = time.perf_counter() - stage

    marks: list[float] = []

    def on_step_end(_pipe: Any, _index: int, _timestep: Any, kwargs: dict) -> dict:
        sync(device)
        marks.append(time.perf_counter())
        return kwargs

    targets = [
        (pipe, "encode_prompt", "clip"),
        (pipe, "encode_image", "vae_encode"),
        (pipe.fusion, "encode_garment", "garment_unet"),
        (pipe.vae, "decode", "vae_decode"),
    ]
    with timed_methods(targets, times, device):
        images = pipe(
            person,
            garment,
            rectangle_mask(request.width, request.height),
            category="upper_body",
            num_inference_steps=request.steps,
            image_guidance_scale=request.scale,
            num_images_per_prompt=request.samples,
            generator=0,
            height=request.height,
            width=request.width,
            callback_on_step_end=on_step_end,
        ).images
    # The loop starts when the last stage before it ends (the garment UNet, unless the garment
    # cache had its features; then the person's VAE encode).
    loop_start = max(value for key, value in times.items() if key.endswith("_end") and value <= marks[0])
    times["step"] = (marks[-1] - loop_start) / len(marks)
    for key in [key for key in times if key.endswith("_end")]:
        del times[key]

    stage = time.perf_counter()
    for image in images:
        encode_image(image, OUTPUT_FORMAT)
    times["encode"] = time.perf_counter() - stage
    timing.total = time.perf_counter() - start
    return timing


def run_config(
    pipe: Any, preprocessor: Any, request: Request, reps: int, device: torch.device
) -> dict[str, Any]:
    """`reps` requests of one configuration: mean stage times, peak memory, or "OOM"."""
    free_memory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timings: list[Timing] = []
    oom = False
    with MemorySampler(device) as sampler:
        try:
            for _ in range(reps):
                timings.append(run_request(pipe, preprocessor, request, device))
        except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(error):
                raise
            oom = True
    row: dict[str, Any] = {"scale": request.scale, "samples": request.samples, "reps": len(timings)}
    if device.type == "cuda":
        row["peak_allocated"] = torch.cuda.max_memory_allocated(device) / GIB
        row["peak_reserved"] = torch.cuda.max_memory_reserved(device) / GIB
        row["peak_device_used"] = sampler.peak / GIB
    if oom:
        row["oom"] = True
        free_memory()  # outside the except block: the traceback no longer pins the tensors
        return row
    row["stages"] = {key: statistics.mean(t.stages[key] for t in timings) for key, _ in STAGES}
    row["total"] = statistics.mean(t.total for t in timings)
    row["pose_outcome"] = timings[-1].pose_outcome
    return row


# ----------------------------------------------------------------------------------- loading
def fp16_converter() -> Callable[[Path], Any] | None:
    """`builder.to_fp16.convert_tree` (the image build's conversion), None where it is missing."""
    if importlib.util.find_spec("builder.to_fp16") is None:
        return None
    from builder.to_fp16 import convert_tree

    return convert_tree


def warm_up_function() -> Callable[..., float] | None:
    """`worker.warmup.warm_up(pipelines, preprocessor) -> seconds` once merged, else None."""
    if importlib.util.find_spec("worker.warmup") is None:
        return None
    from worker.warmup import warm_up

    return warm_up


def build_in_memory(pipe: Any, root: Path, model_type: str, device: torch.device, dtype: torch.dtype) -> Any:
    """A second model type's pipeline with its two UNets built (random) on the device, sharing the
    first pipeline's VAE, text encoder and CLIP: both model types resident, as the worker runs."""
    from bench.models import unet_like
    from ootd import OOTDiffusionPipeline
    from ootd import layout as ootd_layout
    from ootd.pipeline import build_scheduler

    unets = []
    for which in ("unet_garm", "unet_vton"):
        with torch.device(device):
            unet = unet_like(root / ootd_layout.unet_dir(pipe.model_type, which))
        unets.append(unet.to(dtype=dtype).eval())
    return OOTDiffusionPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        image_encoder=pipe.image_encoder,
        image_processor=pipe.image_processor,
        unet_garm=unets[0],
        unet_vton=unets[1],
        scheduler=build_scheduler(dict(pipe.scheduler.config)),
        model_type=model_type,
    )


def load_timed(root: Path, model_type: str, device: torch.device, dtype: torch.dtype) -> tuple[dict, float]:
    from ootd import load_pipelines

    sync(device)
    start = time.perf_counter()
    pipelines = load_pipelines(root, model_types=(model_type,), device=device, dtype=dtype)
    sync(device)
    seconds = time.perf_counter() - start
    for pipe in pipelines.values():
        pipe.set_progress_bar_config(disable=True)
    return pipelines, seconds


# ------------------------------------------------------------------------------------ report
def versions() -> dict[str, str]:
    import diffusers
    import huggingface_hub
    import onnxruntime
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "huggingface_hub": huggingface_hub.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {os.cpu_count()} logical cores, {torch.get_num_threads()} threads)"


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def render(report: dict[str, Any]) -> str:
    """The markdown report: one table per section; sections not reached yet are left out."""
    setup = report["setup"]
    lines = [f"# bench.gpu: {setup['device']} ({setup['date']})", "", f"Status: {report['status']}.", ""]
    lines += ["## Setup", "", "| item | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in setup.items()]

    if "weights" in report:
        lines += ["", "## Weights (bytes the worker reads, from the real parameter counts)", ""]
        lines += ["| model types | fp32 GB | after fp16 step GB |", "|---|---|---|"]
        for types, sizes in report["weights"].items():
            lines.append(f"| {types} | {sizes['fp32'] / GB:.2f} | {sizes['fp16'] / GB:.2f} |")

    if report["load"]:
        lines += ["", "## Load (one model type, hd)", "", "| what | seconds | note |", "|---|---|---|"]
        for name, (seconds, note) in report["load"].items():
            lines.append(f"| {name} | {_s(seconds)} | {note} |")

    if "resident" in report:
        memory = report["resident"]
        lines += ["", "## Memory with both model types resident (GiB)", ""]
        lines += ["| when | torch allocated | torch reserved | device used (driver) |", "|---|---|---|---|"]
        if memory:
            lines.append(
                f"| after loading | {_gib(memory['allocated'])} | {_gib(memory['reserved'])} | "
                f"{_gib(memory['device_used'])} of {_gib(memory['device_total'])} |"
            )
        else:
            lines.append("| after loading | n/a | n/a | n/a (not a CUDA device) |")

    if report.get("configs"):
        req = report["request"]
        lines += [
            "",
            f"## Requests (hd, {req['height']}x{req['width']}, {req['steps']} steps; mean of reps; seconds)",
            "",
            "| guidance | samples | reps | "
            + " | ".join(label for _, label in STAGES)
            + " | s/request | s/sample | peak allocated GiB | peak reserved GiB | peak device used GiB |",
            "|" + "---|" * (len(STAGES) + 8),
        ]
        for row in report["configs"]:
            memory_cells = [_gib(row.get(key)) for key in PEAK_KEYS]
            if row.get("oom"):
                cells = ["OOM"] * (len(STAGES) + 2)
            else:
                cells = [_s(row["stages"][key]) for key, _ in STAGES]
                cells += [_s(row["total"]), _s(row["total"] / row["samples"])]
            head = f"| {row['scale']:g} | {row['samples']} | {row['reps']} | "
            lines.append(head + " | ".join(cells + memory_cells) + " |")

    if report["first"]:
        lines += ["", "## First request vs later (hd, guidance 2, 1 sample)", ""]
        lines += ["| case | seconds | note |", "|---|---|---|"]
        for name, (seconds, note) in report["first"].items():
            lines.append(f"| {name} | {_s(seconds)} | {note} |")

    lines += ["", "## Elapsed per part of this run", "", "| part | seconds | CPU seconds |", "|---|---|---|"]
    parts: Parts = report["parts"]
    cpu = parts.cpu_seconds
    lines += [f"| {name} | {seconds:.1f} | {cpu[name]:.1f} |" for name, seconds in parts.seconds.items()]
    lines += [f"| total | {parts.elapsed():.1f} | {time.process_time():.1f} |", ""]
    return "\n".join(lines)


class ReportFiles:
    """The report's file in each folder, rewritten after every part: a run stopped by a time
    limit still leaves the tables of the parts it finished."""

    def __init__(self, report: dict[str, Any], folders: list[Path]) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M")
        words = "".join(c if c.isalnum() else " " for c in report["setup"]["device"].lower()).split()
        self.name = f"gpu-{stamp}-{'-'.join(words)[:40].strip('-')}.md"
        self.report, self.folders = report, folders

    def save(self, status: str) -> str:
        self.report["status"] = status
        text = render(self.report)
        for folder in self.folders:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / self.name).write_text(text)
        return text

    @property
    def paths(self) -> list[Path]:
        return [folder / self.name for folder in self.folders]


# --------------------------------------------------------------------------------- warm-up child
def child_main(args: argparse.Namespace) -> None:
    """In a fresh process: load one model type, warm up, then the first and second request."""
    from preprocess import Preprocessor

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    from ootd.pipeline import resolve_device_dtype

    device, dtype = resolve_device_dtype(device, dtype)
    pipelines, load_s = load_timed(args.root, args.model_type, device, dtype)
    preprocessor = Preprocessor.from_checkpoints(args.root, device=device)
    warm_up = warm_up_function()
    warm_s = warm_up(pipelines, preprocessor) if warm_up is not None else None
    request = Request(args.height, args.width, args.steps, 2.0, 1)
    pipe = pipelines[args.model_type]
    first = run_request(pipe, preprocessor, request, device).total
    second = run_request(pipe, preprocessor, request, device).total
    print(json.dumps({"load": load_s, "warm_up": warm_s, "first": first, "second": second}))


def run_child(args: argparse.Namespace, root: Path, request: Request, timeout: float) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "bench.gpu", "--child-root", str(root), "--device", args.device,
        "--resolution", f"{request.height}x{request.width}", "--steps", str(request.steps),
    ]  # fmt: skip
    if args.dtype:
        command += ["--dtype", args.dtype]
    completed = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    if completed.returncode != 0:
        tail = completed.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"warm-up child failed ({completed.returncode}): {tail[0]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size",
        choices=tuple(RUN_DEFAULTS),
        default="full",
        help="network sizes (tiny, mid: for CPU; see bench.models)",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--dtype",
        choices=("float16", "bfloat16", "float32"),
        default=None,
        help="UNet/VAE dtype (default: the worker's, float16 on CUDA, float32 on CPU)",
    )
    parser.add_argument("--quick", action="store_true", help="one repetition per configuration")
    parser.add_argument("--out", type=Path, default=None, help="also write the report into this folder")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the report is kept")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the temporary tree")
    parser.add_argument("--resolution", default=None, help="HxW (default 1024x768 full, 128x128 tiny)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 20 full, 2 tiny)")
    parser.add_argument("--scales", default=",".join(f"{s:g}" for s in SCALES), help="image guidance scales")
    parser.add_argument("--samples", default=",".join(str(s) for s in SAMPLES), help="samples per request")
    parser.add_argument(
        "--model-types",
        default="hd,dc",
        help="hd (timed, from files) then dc (built in memory); 'hd' alone saves memory",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time the compiled try-on UNet (default: on with CUDA, off on a CPU)",
    )
    parser.add_argument("--child-root", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = RUN_DEFAULTS[args.size]
    if args.resolution is None:
        args.height, args.width = defaults["resolution"]
    else:
        args.height, args.width = (int(v) for v in args.resolution.lower().split("x"))
    args.steps = args.steps or defaults["steps"]
    args.reps = defaults["quick_reps"] if args.quick else defaults["reps"]
    args.scale_list = tuple(float(v) for v in args.scales.split(","))
    args.sample_list = tuple(int(v) for v in args.samples.split(","))
    args.model_type_list = tuple(args.model_types.split(","))
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.compile is None:
        args.compile = torch.device(args.device).type == "cuda"
    return args


def _cache_note(cache: dict[str, Any]) -> str:
    resident = cache["resident_after_drop"]
    share = "unknown" if resident is None else f"{100 * resident:.0f} %"
    return f"drop_caches {cache['drop_caches']}, fadvise DONTNEED; {share} of the files still cached"


def load_phase(
    args: argparse.Namespace, root: Path, device: torch.device, dtype: torch.dtype, parts: Parts, load: dict
) -> tuple[dict[str, Any], Any]:
    """Write the tree, cold-load it fp32 (and fp16 when `builder.to_fp16` is there), load the
    preprocessor and build the other model types in memory. Returns (pipelines, preprocessor)."""
    from bench.models import write_tree
    from preprocess import Preprocessor

    main_type, *other_types = args.model_type_list
    system_wide = device.type == "cuda"  # a GPU machine of one's own, never a shared CPU box
    with parts.part("write tree"):
        write_tree(root, args.size, (main_type,), device)
        free_memory()
    written = sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
    load[f"write {args.size} tree ({main_type} fp32 + preprocessing)"] = (
        parts.seconds["write tree"],
        f"{written / GB:.2f} GB on {filesystem_of(root)}",
    )

    with parts.part("cold load fp32"):
        cache = drop_page_cache(root, system_wide)
        pipelines, seconds = load_timed(root, main_type, device, dtype)
    load[f"cold load {main_type} fp32 (diffusion)"] = (seconds, _cache_note(cache))
    with parts.part("preprocessor load"):
        start = time.perf_counter()
        preprocessor = Preprocessor.from_checkpoints(root, device=device)
    load["preprocessor load (pose + 2 parsing sessions)"] = (time.perf_counter() - start, "")

    convert = fp16_converter()
    if convert is None:
        load[f"cold load {main_type} fp16 (diffusion)"] = (None, "builder.to_fp16 not merged yet")
    else:
        del pipelines
        free_memory()
        with parts.part("fp16 convert + cold load"):
            start = time.perf_counter()
            convert(root)
            converted = time.perf_counter() - start
            cache = drop_page_cache(root, system_wide)
            pipelines, seconds = load_timed(root, main_type, device, dtype)
        load["fp16 conversion (builder.to_fp16)"] = (converted, f"tree now {cache['bytes'] / GB:.2f} GB")
        load[f"cold load {main_type} fp16 (diffusion)"] = (seconds, _cache_note(cache))

    with parts.part("other model types in memory"):
        for model_type in other_types:
            start = time.perf_counter()
            pipelines[model_type] = build_in_memory(pipelines[main_type], root, model_type, device, dtype)
            load[f"build {model_type} UNets in memory"] = (time.perf_counter() - start, "random; not a load")
    free_memory()
    return pipelines, preprocessor


def request_phase(
    args: argparse.Namespace, pipe: Any, preprocessor: Any, device: torch.device, parts: Parts, report: dict
) -> tuple[Timing, Timing]:
    """The first and second request, then the guidance x samples matrix. Returns the first two."""
    request = Request(args.height, args.width, args.steps, SCALES[0], 1)
    with parts.part("first and second request"):
        first = run_request(pipe, preprocessor, request, device)
        second = run_request(pipe, preprocessor, request, device)
    report["first"]["first request, fresh process, no warm-up"] = (first.total, "")
    report["first"]["second request"] = (second.total, "")
    report["configs"] = []
    reps = args.reps
    if parts.elapsed() > MATRIX_LATE_S and reps > 1:
        reps = 1
        report["setup"]["repetitions"] = f"1 (the run was past {MATRIX_LATE_S:.0f} s before the matrix)"
    with parts.part("request matrix"):
        for scale in args.scale_list:
            for samples in args.sample_list:
                request = Request(args.height, args.width, args.steps, scale, samples)
                row = run_config(pipe, preprocessor, request, reps, device)
                report["configs"].append(row)
                outcome = "OOM" if row.get("oom") else f"{row['total']:.3f} s"
                log(f"guidance {scale:g} x {samples} samples: {outcome}")
    return first, second


def cache_phase(
    args: argparse.Namespace, pipe: Any, preprocessor: Any, device: torch.device, parts: Parts, first: dict
) -> None:
    """Issue 12's savings on this host: the whole request with the garment's conditioning computed
    (miss) and taken from the garment cache (hit, same garment again), and 4 samples' output
    encoding one after the other vs in the worker's threads. (A house-model mask hit is a lookup:
    it saves the pose and parsing rows of the stage table.)"""
    from bench.bench_encoding import sequential_vs_parallel
    from ootd.garment_cache import DEFAULT_GARMENT_CACHE_MB, MB, GarmentCache

    request = Request(args.height, args.width, args.steps, SCALES[0], 1)
    with parts.part("garment cache and encoding"):
        pipe.garment_cache = GarmentCache(DEFAULT_GARMENT_CACHE_MB * MB)
        try:
            miss = run_request(pipe, preprocessor, request, device)
            hit = run_request(pipe, preprocessor, request, device)
        finally:
            pipe.garment_cache = None
        encoding = sequential_vs_parallel(runs=1 if args.quick else 3)
    first["garment cache: miss (whole request)"] = (miss.total, "")
    first["garment cache: hit (same garment again)"] = (hit.total, f"{hit.total / miss.total:.2f}x the miss")
    for output_format, (sequential, parallel) in encoding.items():
        note = f"{os.cpu_count()} CPUs; sequential {sequential:.3f} s: {sequential / parallel:.2f}x"
        first[f"4 x 768x1024 {output_format}, parallel encoding"] = (parallel, note)


def compile_phase(
    args: argparse.Namespace, pipe: Any, preprocessor: Any, device: torch.device, parts: Parts,
    eager: Timing, first: dict,
) -> None:  # fmt: skip
    """Compile the try-on UNet in place, then time two requests against the eager `eager` one."""
    if not args.compile:
        return
    if parts.elapsed() > COMPILE_LATE_S:
        first["compile"] = (None, f"skipped: the run was past {COMPILE_LATE_S:.0f} s")
        return
    from ootd.compile import compile_pipeline

    request = Request(args.height, args.width, args.steps, SCALES[0], 1)
    with parts.part("compile (try-on UNet)"):
        compile_pipeline(pipe)
        compiling = run_request(pipe, preprocessor, request, device)
        compiled = run_request(pipe, preprocessor, request, device)
    eager_step, compiled_step = eager.stages["step"], compiled.stages["step"]
    ratio = f"eager {eager_step:.3f} s: {eager_step / compiled_step:.2f}x"
    first["compile: first compiled request (compile included)"] = (compiling.total, "")
    first["compile: compile time (that minus the eager second request)"] = (compiling.total - eager.total, "")
    first["compile: second compiled request"] = (compiled.total, "")
    first["compile: mean step, compiled"] = (compiled_step, ratio)


def warm_up_phase(args: argparse.Namespace, root: Path, parts: Parts, first: dict) -> None:
    """First request after `warm_up` in a fresh child process (the parent's models are freed)."""
    key = "first request after warm-up"
    if warm_up_function() is None:
        first[key] = (None, "worker.warmup not merged yet")
        return
    if parts.elapsed() > SOFT_LIMIT_S:
        first[key] = (None, f"skipped: the run was past {SOFT_LIMIT_S:.0f} s")
        return
    request = Request(args.height, args.width, args.steps, SCALES[0], 1)
    with parts.part("warm-up child process"):
        try:
            child = run_child(args, root, request, timeout=max(60.0, CHILD_DEADLINE_S - parts.elapsed()))
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as error:
            first[key] = (None, f"failed: {error}")
            return
    first["child: load hd (fresh process, files in page cache)"] = (child["load"], "")
    first["child: warm_up()"] = (child["warm_up"], "")
    first[key] = (child["first"], "")
    first["second request after warm-up"] = (child["second"], "")


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark (or, with the hidden --child-root, the warm-up child) and return the report."""
    args = parse_args(argv)
    if args.child_root is not None:
        args.root, args.model_type = args.child_root, "hd"
        child_main(args)
        return ""
    from bench.models import parameter_counts, weight_bytes
    from ootd.pipeline import resolve_device_dtype

    requested = getattr(torch, args.dtype) if args.dtype else None
    device, dtype = resolve_device_dtype(torch.device(args.device), requested)
    setup = {
        "device": device_name(device),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        **versions(),
        "networks": RUN_DEFAULTS[args.size]["networks"],
        "dtype (UNets, VAE)": str(dtype).removeprefix("torch."),
        "tokenizer": "tiny (tiny_checkpoints.diffusion; ids within CLIP's vocabulary, same prompt lengths)",
        "mask": "fixed torso rectangle (pose and parsing are timed on their own)",
        "repetitions": args.reps,
    }
    report: dict[str, Any] = {"setup": setup, "load": {}, "first": {}}
    files = ReportFiles(report, [args.results_dir] + ([args.out] if args.out is not None else []))
    parts = Parts(on_end=lambda name: files.save(f"partial, last finished part: {name}"))
    report["parts"] = parts

    with parts.part("weights (meta device)"):
        counts = parameter_counts()
        report["weights"] = {"hd": weight_bytes(counts, ("hd",)), "hd,dc": weight_bytes(counts, ("hd", "dc"))}

    with tempfile.TemporaryDirectory(prefix="bench-gpu-", dir=args.workdir) as scratch:
        root = Path(scratch)
        pipelines, preprocessor = load_phase(args, root, device, dtype, parts, report["load"])
        sessions = (preprocessor.parser.atr_session, preprocessor.parser.lip_session)
        setup["parsing providers"] = ", ".join(sorted({name for s in sessions for name in s.get_providers()}))
        setup["pose device"] = str(preprocessor.pose.device)
        setup["model types resident"] = ",".join(pipelines)
        report["resident"] = memory_snapshot(device)
        report["request"] = {"height": args.height, "width": args.width, "steps": args.steps}
        pipe = pipelines[args.model_type_list[0]]
        first, second = request_phase(args, pipe, preprocessor, device, parts, report)
        cache_phase(args, pipe, preprocessor, device, parts, report["first"])
        compile_phase(args, pipe, preprocessor, device, parts, second, report["first"])
        del pipe
        setup["pose on random weights"] = first.pose_outcome
        del pipelines
        free_memory()
        warm_up_phase(args, root, parts, report["first"])

    text = files.save("complete")
    print(text, flush=True)
    for path in files.paths:
        log(f"wrote {path}")
    return text


if __name__ == "__main__":
    main()

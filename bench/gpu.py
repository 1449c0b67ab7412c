"""`python -m bench.gpu`: the worker's real work on one device, measured in one command.

No download: every network is built at its published size with random weights (`bench.models`)
and written to a temporary folder in the form the image ships, `builder.to_fp16`'s (UNets and
VAE float16 safetensors), directly rather than as fp32 files converted afterwards; the production
loaders (`ootd.load_pipelines`, `preprocess.Preprocessor.from_checkpoints`) read it back.

A GPU is lent for minutes, so the parts run in the order of what only a GPU can tell, each
behind a gate (`bench.budget`): it starts only when its estimate, made from what this run has
measured so far, ends inside the budget (`--budget-s`); a part that raises is recorded as failed
with its error in one line, its memory is freed, and the run goes on.

- write-tree, load (always): the tree; hd loaded from it (files just written, in the page
  cache); the preprocessor; dc's UNets built in memory (both model types resident, as in
  production) and one garment cache of the worker's default size for both;
1. requests: the first request in this fresh process; the garment cache filled to its bound
   (the steady state of a worker; gated, one repetition of each configuration kept in
   reserve); guidance 2.0/1.0 x 1/4 samples, every request with a new garment (a miss, which
   evicts), and the first configuration again with a cached garment (a
   hit): time per stage, non-finite outputs (images, float32 decode retries, requests the
   pipeline refused with `NonFiniteOutputError`: counted, not a failure), peak memory, and a
   worker's memory budget with the parsing arenas counted;
2. child: a fresh process loads hd, runs `worker.warmup.warm_up`, then its first and second request;
3. cold-load: hd again from the fp16 files, dropped from the page cache first;
4. compile: `ootd.compile.compile_pipeline` (what `OOTD_COMPILE` does; `--compile-backend`): an
   eager request, then the first (compile included) and second compiled ones, and the mean step;
5. encoding: 4 pictures encoded one after the other vs in the worker's threads (this host's CPUs);
6. weights: bytes fp32 vs fp16 for hd and hd,dc, from the parameter counts (meta device);
7. fp32 (`--with-fp32` only): the hub's fp32 files written, their cold load, `builder.to_fp16` on them.

The markdown report (`bench.gpu_report`: the parts with their outcome first, then a table per
section) is printed at the end and rewritten in `bench/results/` (and `--out DIR`) whenever a part
starts or ends, so a run stopped from outside still leaves what it measured. `--size tiny
--device cpu` runs the same code on the tiny tree (the test suite does); bench/README.md gives
the GPU command and the expected time of each part.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.budget import Estimate, Run, one_line
from bench.gpu_report import OUTPUT_FORMAT, STAGES, ReportFiles, non_finite_cell, non_finite_summary

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
GARMENT_PHOTO = REPO_ROOT / "assets" / "garments" / "0_tshirt.png"
GIB = 2**30
GB = 1e9
MB = 1e6

DEFAULT_BUDGET_S = 360.0
"""The whole run, setup included. One command on the device machine may run 600 s, and a
session has about 15 minutes of device time in all, machine start (1-2 minutes) included:
bench/README's command gives it `timeout_s` 420 (a part that overruns its estimate still ends
before that), which leaves time for a second call."""
REQUEST_PRIOR_S = 10.0
"""Seconds assumed for one request (guidance 2, 1 sample) only while none has been measured in
this run (the requests part failed or was not asked); every estimate says which it used."""
COMPILE_PRIOR_S = {"inductor": 120.0}
"""Seconds assumed for compiling the try-on UNet for one shape, by backend (others: 20 s):
inductor takes one to two minutes for a full-size SD-1.5 UNet (PyTorch's and diffusers'
published figures, bench/README). `--compile-estimate-s` replaces it."""
OTHER_COMPILE_PRIOR_S = 20.0
STARTUP_PRIOR_S = 10.0
"""A fresh interpreter's start and torch import, which this process cannot time (they happened
before `main`); the child's estimate adds what this process measured for the rest."""
DISK_PRIOR_BPS = 0.5e9
"""Bytes per second assumed for reading the tree from disk (cold), for the cold load's estimate."""
ENCODING_PRIOR_S = 10.0
WEIGHTS_PRIOR_S = 15.0
CACHE_FILL_MAX = 24
"""Garments put into the garment cache to fill it: at 1024x768 with guidance an entry is 139 MB,
so 11 fill the default 1500 MB; the tiny entries of a CPU run stop here, short of the bound (the
report says how full it got)."""

PARTS: tuple[str, ...] = ("requests", "child", "cold-load", "compile", "encoding", "weights", "fp32")
"""The measuring parts, in run order (after write-tree and load, which always run)."""
DEFAULT_PARTS: tuple[str, ...] = PARTS[:-1]
NEEDS: dict[str, tuple[str, ...]] = {
    "load": ("write-tree",),
    "requests": ("load",),
    "child": ("write-tree",),
    "cold-load": ("write-tree",),
    "compile": ("write-tree",),
    "fp32": ("write-tree",),
}
"""What each part cannot do without (compile loads the pipelines itself when cold-load did not)."""

RUN_DEFAULTS: dict[str, dict[str, Any]] = {
    "full": {"resolution": (1024, 768), "steps": 20, "reps": 3, "quick_reps": 1,
             "networks": "published architectures, full size, random weights"},
    "mid": {"resolution": (512, 384), "steps": 20, "reps": 1, "quick_reps": 1,
            "networks": "published architectures, UNets and VAE at half width, random weights"},
    "tiny": {"resolution": (128, 128), "steps": 2, "reps": 2, "quick_reps": 1, "networks": "tiny"},
}  # fmt: skip
"""Per tree size (`bench.models.SIZES`): what a run measures unless told otherwise, and what the
report calls its networks."""
SCALES = (2.0, 1.0)
SAMPLES = (1, 4)


# ----------------------------------------------------------------------------------- helpers
def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the report."""
    print(f"[bench.gpu] {message}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    images: int = 0
    non_finite: int = 0
    """Images with a NaN or infinite value: all of a request the pipeline refused, else those
    of its float output that hold one (the pipeline's own check should leave none)."""
    float32_retries: int = 0
    """1 when the pipeline decoded again in float32 (its `decoded_in_float32`, or a refusal at
    the VAE decode of a VAE that is not float32 already: the retry ran and did not mend it)."""
    refused: str = ""
    """The stage named by the `NonFiniteOutputError` the pipeline raised instead of returning
    non-finite images ("" when it returned images). The stages up to it are timed; nothing
    was encoded."""


class Garments:
    """The shipped garment photo, tinted differently on every call: a new garment for the garment
    cache (whose key hashes the pixels), with the same arithmetic as any other."""

    def __init__(self) -> None:
        self.base = Image.open(GARMENT_PHOTO).convert("RGB")
        self.count = 0

    def new(self) -> Image.Image:
        self.count += 1
        step = self.count
        tint = ((61 * step) % 256, (113 * step) % 256, (197 * step) % 256)  # odd: 256 distinct tints
        return Image.blend(self.base, Image.new("RGB", self.base.size, tint), 0.2)


def person_photo() -> Image.Image:
    """The house model photo that ships with the worker."""
    from bench.models import HOUSE_PHOTO

    return Image.open(HOUSE_PHOTO).convert("RGB")


def rectangle_mask(width: int, height: int) -> Image.Image:
    """The torso box: the fixed person the random-weight pose and parsing report is not the photo's."""
    mask = np.zeros((height, width), np.uint8)
    mask[height // 5 : 3 * height // 4, width // 5 : 4 * width // 5] = 255
    return Image.fromarray(mask, "L")


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


def non_finite_images(images: np.ndarray) -> int:
    """How many of the (N, H, W, 3) float images hold a NaN or an infinity: a check of the
    pipeline's own (it refuses such results with `NonFiniteOutputError`, which `run_request`
    counts), on the floats the 8-bit pictures are made from."""
    return int((~np.isfinite(images.reshape(len(images), -1))).any(axis=1).sum())


def run_request(
    pipe: Any, preprocessor: Any, request: Request, device: torch.device, person: Image.Image,
    garment: Image.Image,
) -> Timing:  # fmt: skip
    """Time one request stage by stage (every stage ends with a device synchronisation)."""
    from diffusers.image_processor import VaeImageProcessor

    from ootd.errors import NonFiniteOutputError
    from preprocess import PreprocessError
    from preprocess.preprocessor import parse_input
    from worker.encoding import encode_images

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
    output = None
    with timed_methods(targets, times, device):
        try:
            output = pipe(
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
                output_type="np",  # the floats "pil" is made from: what a NaN would have been
                callback_on_step_end=on_step_end,
            )
        except NonFiniteOutputError as error:  # a non-finite output, counted: not a crash
            timing.refused = error.stage
    # The loop starts when the last stage before it ends (the garment UNet, unless the garment
    # cache had its features; then the person's VAE encode).
    loop_start = max(value for key, value in times.items() if key.endswith("_end") and value <= marks[0])
    times["step"] = (marks[-1] - loop_start) / len(marks)
    for key in [key for key in times if key.endswith("_end")]:
        del times[key]
    for key, _ in STAGES:
        times.setdefault(key, 0.0)  # a cached garment runs no CLIP and no garment UNet
    timing.images = request.samples
    if output is None:
        timing.non_finite = request.samples
        timing.float32_retries = int(timing.refused == "VAE decode" and pipe.vae.dtype != torch.float32)
        timing.total = time.perf_counter() - start
        return timing
    timing.non_finite = non_finite_images(output.images)
    timing.float32_retries = int(output.decoded_in_float32)
    pictures = VaeImageProcessor.numpy_to_pil(output.images)  # the pipeline's own "pil" step

    stage = time.perf_counter()
    encode_images([(picture, OUTPUT_FORMAT) for picture in pictures])  # the worker's threads
    times["encode"] = time.perf_counter() - stage
    timing.total = time.perf_counter() - start
    return timing


# ----------------------------------------------------------------------------------- loading
def load_timed(
    root: Path, model_type: str, device: torch.device, dtype: torch.dtype | None, garment_cache: Any = None
) -> tuple[dict, float]:
    from ootd import load_pipelines

    sync(device)
    start = time.perf_counter()
    pipelines = load_pipelines(
        root, model_types=(model_type,), device=device, dtype=dtype, garment_cache=garment_cache
    )
    sync(device)
    seconds = time.perf_counter() - start
    for pipe in pipelines.values():
        pipe.set_progress_bar_config(disable=True)
    return pipelines, seconds


def build_in_memory(pipe: Any, root: Path, model_type: str, device: torch.device) -> Any:
    """A second model type's pipeline with its two UNets built (random) on the device, sharing the
    first pipeline's VAE, text encoder, CLIP and garment cache: both model types resident, as the
    worker runs them."""
    from bench.models import unet_like
    from ootd import OOTDiffusionPipeline
    from ootd import layout as ootd_layout

    unets = []
    for which in ("unet_garm", "unet_vton"):
        with torch.device(device):
            unet = unet_like(root / ootd_layout.unet_dir(pipe.model_type, which))
        unets.append(unet.to(dtype=pipe.unet_vton.dtype).eval())
    other = OOTDiffusionPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        image_encoder=pipe.image_encoder,
        image_processor=pipe.image_processor,
        unet_garm=unets[0],
        unet_vton=unets[1],
        scheduler=type(pipe.scheduler).from_config(pipe.scheduler.config),  # its own run state
        model_type=model_type,
    )
    other.set_progress_bar_config(disable=True)
    other.garment_cache = pipe.garment_cache
    return other


def parsing_arenas(parser: Any) -> dict[str, Any]:
    """What the parsing sessions' onnxruntime CUDA arenas may hold together in production: the
    limit the preprocessor gives each session (`preprocess.parsing.cuda_provider_options`'
    default) times the sessions. torch's allocator cannot see or reclaim these arenas, so a
    worker's memory budget counts them at their limit. `on_device`: the sessions run on CUDA here
    (their arenas are then inside the driver's figures); on the CPU provider they are not, and
    are added. This is the one place to adapt when the arena setting changes."""
    from preprocess.parsing import CUDA_PROVIDER, cuda_provider_options

    sessions = [parser.atr_session, parser.lip_session]
    per_session = int(cuda_provider_options()["gpu_mem_limit"])
    return {
        "bytes": per_session * len(sessions),
        "sessions": len(sessions),
        "per_session": per_session,
        "on_device": any(CUDA_PROVIDER in session.get_providers() for session in sessions),
    }


# -------------------------------------------------------------------------------- the run
class SomeRequestsFailed(RuntimeError):
    """Configurations of the requests part raised (other than out of memory): the part failed,
    and the rows that ran stay in the report."""


@dataclass
class Bench:
    """What the parts share: the options, the tree, what is loaded, and what was measured."""

    args: argparse.Namespace
    device: torch.device
    dtype: torch.dtype | None
    root: Path
    report: dict[str, Any]
    run: Run
    pipelines: dict[str, Any] | None = None
    preprocessor: Any = None
    cache: Any = None
    measured: dict[str, float] = field(default_factory=dict)
    garments: Garments = field(default_factory=Garments)
    person: Image.Image = field(default_factory=person_photo)

    @property
    def main_type(self) -> str:
        return self.args.model_type_list[0]

    def request(self, scale: float = SCALES[0], samples: int = 1) -> Request:
        return Request(self.args.height, self.args.width, self.args.steps, scale, samples)

    def request_once(self, pipe: Any, request: Request, garment: Image.Image | None = None) -> Timing:
        garment = garment if garment is not None else self.garments.new()
        return run_request(pipe, self.preprocessor, request, self.device, self.person, garment)

    def free_pipelines(self) -> None:
        self.pipelines = None
        self.cache = None
        free_memory()

    # --------------------------------------------------------------------------- estimates
    def request_seconds(self) -> tuple[float, str]:
        """One request (guidance 2, 1 sample) as measured here, or the prior, and which."""
        if "request" in self.measured:
            return self.measured["request"], f"{self.measured['request']:.1f} s a request, measured"
        return REQUEST_PRIOR_S, f"{REQUEST_PRIOR_S:.0f} s a request, assumed: none measured"

    def estimate(self, part: str) -> Estimate | None:
        """How long `part` should take from here, from this run's measurements (see each basis)."""
        request, request_basis = self.request_seconds()
        loaded = self.measured.get("load", 0.0) + self.measured.get("preprocessor", 0.0)
        if part == "requests":
            return None  # the first measurement: nothing to estimate it from
        if part == "child":
            startup = (
                STARTUP_PRIOR_S + self.measured.get("imports", 0.0) + self.measured.get("cuda_context", 0.0)
            )
            seconds = startup + loaded + 3 * request
            basis = f"start-up ~{startup:.0f} s + load {loaded:.1f} s + 3 requests at {request_basis}"
            return Estimate(seconds, basis)
        if part == "cold-load":
            disk = self.measured.get("tree_bytes", 0.0) / DISK_PRIOR_BPS
            load = self.measured.get("load", 0.0)
            return Estimate(
                load + disk, f"warm load {load:.1f} s + reading the tree at {DISK_PRIOR_BPS / GB} GB/s"
            )
        if part == "compile":
            compile_s = self.args.compile_estimate_s
            if compile_s is None:
                compile_s = COMPILE_PRIOR_S.get(self.args.compile_backend, OTHER_COMPILE_PRIOR_S)
            load = 0.0 if self.pipelines else self.measured.get("load", 0.0)
            return Estimate(
                compile_s + load + 3 * request,
                f"compiling ~{compile_s:.0f} s ({self.args.compile_backend}) + 3 requests at {request_basis}"
                + (f" + load {load:.1f} s" if load else ""),
            )
        if part == "encoding":
            return Estimate(ENCODING_PRIOR_S, "assumed")
        if part == "weights":
            return Estimate(WEIGHTS_PRIOR_S, "assumed")
        if part == "fp32":
            write, load = self.measured.get("write", 0.0), self.measured.get("load", 0.0)
            return Estimate(
                3 * write + 2 * load, f"3 x the fp16 tree's write {write:.1f} s + 2 x load {load:.1f} s"
            )
        raise ValueError(f"no estimate for part {part!r}")

    def reserve_after_requests(self) -> float:
        """The later GPU parts' estimates: extra repetitions of a request run only while these still fit."""
        later = [part for part in ("child", "cold-load", "compile") if part in self.args.part_list]
        return sum(estimate.seconds for part in later if (estimate := self.estimate(part)) is not None)


def run_config(
    bench: Bench, pipe: Any, request: Request, garment: Image.Image | None = None
) -> tuple[dict[str, Any], Image.Image | None]:
    """`reps` requests of one configuration: mean stage times, peak memory, "OOM", or the error.

    Each request takes a new garment (a garment-cache miss) unless `garment` is given (then a
    hit, once it is cached). The first repetition runs when its estimate fits the budget; later
    ones only while the later parts' estimates still fit too. Returns the row and the last
    garment used."""
    device, reps = bench.device, bench.args.reps
    free_memory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timings: list[Timing] = []
    row: dict[str, Any] = {"scale": request.scale, "samples": request.samples, "planned": reps,
                           "garment": "cached (hit)" if garment is not None else "new (miss)"}  # fmt: skip
    used = garment
    with MemorySampler(device) as sampler:
        for rep in range(reps):
            if rep == 0:
                per_sample, basis = bench.request_seconds()
                estimate = Estimate(per_sample * request.samples, f"{request.samples} x {basis}")
                reason = bench.run.gate(estimate)
            else:
                mean = statistics.mean(t.total for t in timings)
                reason = bench.run.gate(Estimate(mean, "this row's mean"), bench.reserve_after_requests())
            if reason is not None:
                row["stopped"] = reason
                break
            used = garment if garment is not None else bench.garments.new()
            try:
                timings.append(bench.request_once(pipe, request, used))
            except Exception as error:  # recorded in the row; the part fails at its end
                if is_out_of_memory(error):
                    row["oom"] = True
                else:
                    row["error"] = one_line(error)
                break
    free_memory()  # outside the except block: the traceback no longer pins the tensors
    row["reps"] = len(timings)
    if device.type == "cuda":
        row["peak_allocated"] = torch.cuda.max_memory_allocated(device) / GIB
        row["peak_reserved"] = torch.cuda.max_memory_reserved(device) / GIB
        row["peak_device_used"] = sampler.peak / GIB
    row.update(count_non_finite(timings))
    finished = [t for t in timings if not t.refused]  # times of what a client would have received
    if finished:
        row["stages"] = {key: statistics.mean(t.stages[key] for t in finished) for key, _ in STAGES}
        row["total"] = statistics.mean(t.total for t in finished)
    return row, used


def count_non_finite(timings: list[Timing]) -> dict[str, Any]:
    """A row's images, how many were non-finite, the float32 retries and the stages at which
    the pipeline refused a request (`NonFiniteOutputError`), over every request that ran."""
    return {
        "images": sum(t.images for t in timings),
        "non_finite": sum(t.non_finite for t in timings),
        "float32_retries": sum(t.float32_retries for t in timings),
        "refused": [t.refused for t in timings if t.refused],
    }


def fill_garment_cache(bench: Bench, pipe: Any) -> str:
    """Put new garments into the garment cache until it evicts (full) or `CACHE_FILL_MAX`: the
    steady state of a worker that has served many garments. Each is the pipeline's own work for a
    new garment at this run's size with guidance (CLIP, VAE encodes, garment UNet) and one
    denoising step, latents out (nothing decoded).

    Gated like everything else: a garment is put in only while its estimate (the previous one's
    time; for the first, a whole request's) fits with one repetition of every configuration kept
    in reserve, so a slow fill cannot eat the requests it is the set-up for."""
    cache, request = bench.cache, bench.request()
    mask = rectangle_mask(request.width, request.height)
    per_request, basis = bench.request_seconds()
    reserve = per_request * len(bench.args.scale_list) * sum(bench.args.sample_list)
    estimate = Estimate(per_request, basis)
    full, stopped = False, ""
    for put in range(CACHE_FILL_MAX):
        reason = bench.run.gate(estimate, reserve)
        if reason is not None:
            stopped = f"the budget stopped the fill after {put} garments: {reason}"
            break
        before, start = len(cache), time.perf_counter()
        pipe(
            bench.person, bench.garments.new(), mask, category="upper_body", num_inference_steps=1,
            image_guidance_scale=request.scale, generator=0, height=request.height, width=request.width,
            output_type="latent",
        )  # fmt: skip
        sync(bench.device)
        estimate = Estimate(time.perf_counter() - start, "the last garment's fill, measured")
        if len(cache) <= before:
            full = True
            break
    held = f"{len(cache)} entries, {cache.nbytes / MB:.0f} MB of {cache.max_bytes / MB:.0f} MB"
    if stopped:
        return f"{held} (not full: {stopped})"
    if not len(cache):
        return f"{held} (empty: one entry is larger than the bound)"
    if full:
        return f"{held} (full: the last garment evicted the oldest)"
    return f"{held} (not full: the fill stops after {CACHE_FILL_MAX} garments)"


def memory_budget(bench: Bench) -> list[tuple[str, float | None, str]]:
    """The memory one worker needs: the worst request's peak with the garment cache filled and both
    model types resident, plus the parsing arenas where they are not on this device."""
    arenas = parsing_arenas(bench.preprocessor.parser)
    rows: list[tuple[str, float | None, str]] = []
    measured = [row for row in bench.report["configs"] if "peak_device_used" in row]
    worst = max(measured, key=lambda row: row["peak_device_used"]) if measured else None
    if worst is None:
        rows.append(("peak device used, worst request", None, "not measured (not a CUDA device)"))
    else:
        what = f"guidance {worst['scale']:g} x {worst['samples']} samples"
        what += ", OOM" if worst.get("oom") else ""
        note = "the driver's figure: CUDA context, both model types, the filled garment cache, activations"
        rows.append((f"peak device used, worst request ({what})", worst["peak_device_used"], note))
    limit = f"{arenas['sessions']} sessions x {arenas['per_session'] / GIB:.2f} GiB"
    if arenas["on_device"]:
        rows.append((f"parsing arenas ({limit})", 0.0, "CUDA provider here: inside the peak above"))
    else:
        note = "CPU provider here, not on this device: added at the limit production's CUDA sessions may hold"
        rows.append((f"parsing arenas ({limit})", arenas["bytes"] / GIB, note))
    if worst is not None:
        total = worst["peak_device_used"] + (0.0 if arenas["on_device"] else arenas["bytes"] / GIB)
        headroom = " / ".join(f"{card - total:+.2f}" for card in (24, 48, 80))
        rows.append(("total", total, f"left on a 24 / 48 / 80 GiB card: {headroom}"))
    return rows


# ------------------------------------------------------------------------------------ parts
def part_write_tree(bench: Bench) -> str:
    """The tree in the image's form, plus the preprocessing networks."""
    from bench.models import write_tree

    load = bench.report["load"]
    load["imports (diffusers, transformers, onnxruntime)"] = (bench.measured["imports"], "")
    if bench.device.type == "cuda":
        start = time.perf_counter()
        torch.empty(1, device=bench.device)  # creates the CUDA context
        bench.measured["cuda_context"] = time.perf_counter() - start
        load["CUDA context"] = (bench.measured["cuda_context"], "")
    start = time.perf_counter()
    write_tree(bench.root, bench.args.size, (bench.main_type,), bench.device, fp16=True)
    free_memory()
    bench.measured["write"] = time.perf_counter() - start
    files = [path for path in bench.root.rglob("*") if path.is_file()]
    bench.measured["tree_bytes"] = sum(path.stat().st_size for path in files)
    where = f"{bench.measured['tree_bytes'] / GB:.2f} GB on {filesystem_of(bench.root)}"
    load[f"write {bench.args.size} tree ({bench.main_type} fp16 + preprocessing)"] = (
        bench.measured["write"],
        f"{where}; diffusion networks built on {bench.device.type}",
    )
    return where


def part_load(bench: Bench) -> str:
    """hd from the files just written, the preprocessor, the other types in memory, one garment cache."""
    from ootd.garment_cache import GarmentCache
    from preprocess import Preprocessor

    bench.cache = GarmentCache(int(bench.args.garment_cache_mb * MB))
    main = bench.main_type
    pipelines, seconds = load_timed(bench.root, main, bench.device, bench.dtype, bench.cache)
    bench.measured["load"] = seconds
    bench.dtype = pipelines[main].unet_vton.dtype
    load = bench.report["load"]
    load[f"load {main} fp16 files (just written: in the page cache)"] = (seconds, "")
    start = time.perf_counter()
    bench.preprocessor = Preprocessor.from_checkpoints(bench.root, device=bench.device)
    bench.measured["preprocessor"] = time.perf_counter() - start
    load["preprocessor load (pose + 2 parsing sessions)"] = (bench.measured["preprocessor"], "")
    for model_type in bench.args.model_type_list[1:]:
        start = time.perf_counter()
        pipelines[model_type] = build_in_memory(pipelines[main], bench.root, model_type, bench.device)
        load[f"build {model_type} UNets in memory"] = (time.perf_counter() - start, "random; not a load")
    bench.pipelines = pipelines
    parser = bench.preprocessor.parser
    setup = bench.report["setup"]
    setup["dtype (UNets, VAE)"] = str(bench.dtype).removeprefix("torch.")
    sessions = (parser.atr_session, parser.lip_session)
    setup["parsing providers"] = ", ".join(sorted({name for s in sessions for name in s.get_providers()}))
    setup["pose device"] = str(bench.preprocessor.pose.device)
    setup["model types resident"] = ",".join(pipelines)
    free_memory()
    resident = ",".join(pipelines)
    bench.report["memory"].append((f"after loading ({resident} resident)", memory_snapshot(bench.device)))
    return f"{resident} resident"


def part_requests(bench: Bench) -> str:
    """The first request, the cache filled, the configurations, a cached garment, the budget."""
    pipe = bench.pipelines[bench.main_type]
    first = bench.request_once(pipe, bench.request())
    bench.measured["request"] = first.total
    first_row = "first request in this process, no warm-up (new garment)"
    bench.report["first"][first_row] = (first.total, refused_note(first))
    bench.report["setup"]["pose on random weights"] = first.pose_outcome
    filled = fill_garment_cache(bench, pipe)
    bench.report["memory"].append((f"garment cache filled: {filled}", memory_snapshot(bench.device)))
    rows = bench.report["configs"]
    for scale in bench.args.scale_list:
        for samples in bench.args.sample_list:
            row, garment = run_config(bench, pipe, bench.request(scale, samples))
            rows.append(row)
            if len(rows) == 1 and row["reps"]:
                if scale == SCALES[0] and samples == 1 and "total" in row:
                    bench.measured["request"] = row["total"]  # steady state, for the estimates
                rows.append(run_config(bench, pipe, bench.request(scale, samples), garment)[0])
            log(f"guidance {scale:g} x {samples} samples: {row_outcome(row)}")
    bench.report["budget"] = memory_budget(bench)
    failed = [row for row in rows if "error" in row]
    if failed:
        first_error = failed[0]["error"]
        raise SomeRequestsFailed(f"{len(failed)} of {len(rows)} configurations failed, first: {first_error}")
    return f"{filled}; {non_finite_summary(rows)}"


def refused_note(timing: Timing) -> str:
    """A timed request's note when the pipeline refused its output (its time runs to the refusal)."""
    if not timing.refused:
        return ""
    return f"non-finite output: NonFiniteOutputError at the {timing.refused} (timed up to it)"


def joined(*notes: str) -> str:
    return "; ".join(note for note in notes if note)


def row_outcome(row: dict[str, Any]) -> str:
    if row.get("oom"):
        return "OOM"
    if "error" in row:
        return f"failed ({row['error']})"
    if not row["reps"]:
        return f"skipped ({row.get('stopped', '')})"
    if "total" not in row:
        return f"non-finite ({non_finite_cell(row)})"
    return f"{row['total']:.3f} s; {non_finite_cell(row)}"


def part_child(bench: Bench) -> str:
    """First and second request after `worker.warmup.warm_up` in a fresh process, which has the
    device to itself (this process frees its pipelines first; the cold load reloads)."""
    bench.free_pipelines()
    start = time.perf_counter()
    child = run_child(bench.args, bench.root, timeout=max(1.0, bench.run.left()))
    wall = time.perf_counter() - start
    segments = ("load", "preprocessor", "warm_up", "first", "second")
    first = bench.report["first"]
    first["child: start-up (interpreter, imports, CUDA context)"] = (
        wall - sum(child[key] for key in segments),
        "the child's wall time minus the rows below",
    )
    first[f"child: load {bench.main_type} fp16 (files in the page cache)"] = (child["load"], "")
    first["child: preprocessor load"] = (child["preprocessor"], "")
    warm_up = "worker.warmup: pose, parsing, a 2-step try-on at the smallest size"
    first["child: warm_up()"] = (child["warm_up"], warm_up)
    for index, key in enumerate(("first", "second")):
        timing = Timing(total=child[key], refused=child["refused"][index])
        first[f"child: {key} request" + (" after warm-up" if key == "first" else "") + " (new garment)"] = (
            timing.total,
            refused_note(timing),
        )
    return f"{wall:.1f} s in all"


def part_cold_load(bench: Bench) -> str:
    """hd from its fp16 files after dropping them from the page cache."""
    bench.free_pipelines()
    dropped = drop_page_cache(bench.root, system_wide=bench.device.type == "cuda")
    bench.pipelines, seconds = load_timed(bench.root, bench.main_type, bench.device, bench.dtype)
    bench.report["load"][f"cold load {bench.main_type} fp16 files"] = (seconds, cache_note(dropped))
    return cache_note(dropped)


def part_compile(bench: Bench) -> str:
    """An eager request, then `compile_pipeline` and two requests: compile time and step ratio."""
    from ootd.compile import compile_pipeline

    table = bench.report["compile"]
    if not bench.pipelines:
        bench.pipelines, seconds = load_timed(bench.root, bench.main_type, bench.device, bench.dtype)
        table[f"load {bench.main_type} (the cold load did not run)"] = (seconds, "files in the page cache")
    pipe = bench.pipelines[bench.main_type]
    request = bench.request()
    counters = torch._dynamo.utils.counters["stats"]
    graphs = counters["unique_graphs"]
    try:
        eager = bench.request_once(pipe, request)
        table["eager request (new garment)"] = (eager.total, refused_note(eager))
        compile_pipeline(pipe, backend=bench.args.compile_backend)
        compiling = bench.request_once(pipe, request)
        captured = counters["unique_graphs"] - graphs
        graphs_note = f"backend {bench.args.compile_backend}; dynamo captured {captured} graph(s)"
        table["first compiled request (compile included)"] = (
            compiling.total,
            joined(graphs_note, refused_note(compiling)),
        )
        table["compile time (that minus the eager request)"] = (compiling.total - eager.total, "")
        compiled = bench.request_once(pipe, request)
        speed_up = f"{eager.total / compiled.total:.2f}x faster than eager"
        table["second compiled request"] = (compiled.total, joined(speed_up, refused_note(compiled)))
        table["mean step, eager"] = (eager.stages["step"], "")
        ratio = eager.stages["step"] / compiled.stages["step"]
        table["mean step, compiled"] = (compiled.stages["step"], f"{ratio:.2f}x faster than eager")
    finally:
        bench.free_pipelines()  # compiled modules are not reused
        torch._dynamo.reset()
    return f"compile {compiling.total - eager.total:.1f} s, step {ratio:.2f}x"


def part_encoding(bench: Bench) -> str:
    from bench.bench_encoding import sequential_vs_parallel

    times = sequential_vs_parallel(runs=1 if bench.args.quick else 3)
    for output_format, (sequential, parallel) in times.items():
        bench.report["encoding"][output_format] = (sequential, parallel)
    return f"{os.cpu_count()} CPUs"


def part_weights(bench: Bench) -> str:
    from bench.models import parameter_counts, weight_bytes

    counts = parameter_counts()
    bench.report["weights"] = {
        types: weight_bytes(counts, tuple(types.split(","))) for types in ("hd", "hd,dc")
    }
    return ""


def part_fp32(bench: Bench) -> str:
    """The hub's fp32 files for hd written over the tree, their cold load, then the image build's
    conversion (`builder.to_fp16`) back to the form the other parts measured."""
    from bench.models import write_diffusion
    from builder.to_fp16 import convert_tree
    from ootd import layout as ootd_layout

    bench.free_pipelines()
    main, load = bench.main_type, bench.report["load"]
    for folder in (ootd_layout.OOTD_DIR, ootd_layout.CLIP_DIR):
        shutil.rmtree(bench.root / folder)
    start = time.perf_counter()
    write_diffusion(bench.root, bench.args.size, (main,), bench.device, fp16=False)
    free_memory()
    written = sum(path.stat().st_size for path in bench.root.rglob("*") if path.is_file())
    load[f"write {main} fp32 (hub formats)"] = (time.perf_counter() - start, f"tree {written / GB:.2f} GB")
    dropped = drop_page_cache(bench.root, system_wide=bench.device.type == "cuda")
    pipelines, seconds = load_timed(bench.root, main, bench.device, bench.dtype)
    del pipelines
    free_memory()
    load[f"cold load {main} fp32 files"] = (seconds, cache_note(dropped))
    start = time.perf_counter()
    converted = convert_tree(bench.root)
    load["builder.to_fp16 on that tree"] = (
        time.perf_counter() - start,
        f"{converted.bytes_before / GB:.2f} GB -> {converted.bytes_after / GB:.2f} GB "
        f"in {len(converted.converted)} files",
    )
    return f"fp32 cold load {seconds:.1f} s"


PART_WORK: dict[str, Callable[[Bench], str]] = {
    "requests": part_requests,
    "child": part_child,
    "cold-load": part_cold_load,
    "compile": part_compile,
    "encoding": part_encoding,
    "weights": part_weights,
    "fp32": part_fp32,
}


# --------------------------------------------------------------------------------- warm-up child
def child_main(args: argparse.Namespace) -> None:
    """In a fresh process: load one model type, warm up, then the first and second request."""
    from ootd.garment_cache import GarmentCache
    from preprocess import Preprocessor
    from worker.warmup import warm_up

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model_type = args.model_type_list[0]
    cache = GarmentCache(int(args.garment_cache_mb * MB))
    pipelines, load_s = load_timed(args.child_root, model_type, device, dtype, cache)
    start = time.perf_counter()
    preprocessor = Preprocessor.from_checkpoints(args.child_root, device=device)
    preprocessor_s = time.perf_counter() - start
    warm_s = warm_up(pipelines, preprocessor)
    request = Request(args.height, args.width, args.steps, SCALES[0], 1)
    person, garments, pipe = person_photo(), Garments(), pipelines[model_type]
    first = run_request(pipe, preprocessor, request, device, person, garments.new())
    second = run_request(pipe, preprocessor, request, device, person, garments.new())
    print(json.dumps({"load": load_s, "preprocessor": preprocessor_s, "warm_up": warm_s, "first": first.total,
                      "second": second.total, "refused": [first.refused, second.refused]}))  # fmt: skip


def run_child(args: argparse.Namespace, root: Path, timeout: float) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "bench.gpu", "--child-root", str(root), "--device", args.device,
        "--resolution", f"{args.height}x{args.width}", "--steps", str(args.steps),
        "--model-types", args.model_type_list[0], "--garment-cache-mb", str(args.garment_cache_mb),
    ]  # fmt: skip
    if args.dtype:
        command += ["--dtype", args.dtype]
    try:
        completed = subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise TimeoutError(f"the child was killed at the end of the budget, after {timeout:.0f} s") from error
    if completed.returncode != 0:
        tail = completed.stderr.strip().splitlines()
        for line in tail[-20:]:
            log(f"child: {line}")
        raise RuntimeError(f"the child exited with {completed.returncode}: {(tail or ['no output'])[-1]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--size", choices=tuple(RUN_DEFAULTS), default="full", help="network sizes (tiny, mid: for a CPU)")
    add("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    dtypes = ("float16", "bfloat16", "float32")
    add(
        "--dtype",
        choices=dtypes,
        help="UNet/VAE dtype (default: the worker's, float16 on CUDA, float32 on CPU)",
    )
    add(
        "--budget-s", type=float, default=DEFAULT_BUDGET_S, help="seconds for the whole run (parts are gated)"
    )
    add("--parts", default=",".join(DEFAULT_PARTS), help=f"which of {','.join(PARTS)} to run (in that order)")
    add("--with-fp32", action="store_true", help="also the fp32 files: write, cold load, builder.to_fp16")
    add("--quick", action="store_true", help="one repetition per configuration")
    add("--out", type=Path, default=None, help="also write the report into this folder")
    add("--results-dir", type=Path, default=RESULTS_DIR, help="where the report is kept")
    add("--workdir", type=Path, default=None, help="where to write the temporary tree")
    add("--resolution", default=None, help="HxW (default 1024x768 full, 128x128 tiny)")
    add("--steps", type=int, default=None, help="denoising steps (default 20 full, 2 tiny)")
    add("--scales", default=",".join(f"{s:g}" for s in SCALES), help="image guidance scales")
    add("--samples", default=",".join(str(s) for s in SAMPLES), help="samples per request")
    add("--model-types", default="hd,dc", help="hd (timed, from files) then dc (built in memory)")
    add(
        "--garment-cache-mb",
        type=float,
        default=None,
        help="the garment cache's bound (default: the worker's)",
    )
    add("--compile-backend", default="inductor", help="torch.compile backend (eager: a quick CPU check)")
    add("--compile-estimate-s", type=float, default=None, help="compile seconds the compile gate assumes")
    add("--child-root", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = RUN_DEFAULTS[args.size]
    if args.resolution is None:
        args.height, args.width = defaults["resolution"]
    else:
        args.height, args.width = (int(v) for v in args.resolution.lower().split("x"))
    from ootd.pipeline import MAX_SIDE, SIZE_MULTIPLE  # the pipeline's rule, checked before minutes pass

    sides = (args.height, args.width)
    if any(side % SIZE_MULTIPLE or not SIZE_MULTIPLE <= side <= MAX_SIDE for side in sides):
        parser.error(f"--resolution: each side a multiple of {SIZE_MULTIPLE} in {SIZE_MULTIPLE}..{MAX_SIDE}")
    args.steps = args.steps or defaults["steps"]
    args.reps = defaults["quick_reps"] if args.quick else defaults["reps"]
    args.scale_list = tuple(float(v) for v in args.scales.split(","))
    args.sample_list = tuple(int(v) for v in args.samples.split(","))
    args.model_type_list = tuple(args.model_types.split(","))
    args.part_list = tuple(part for part in args.parts.split(",") if part)
    args.part_list += ("fp32",) if args.with_fp32 and "fp32" not in args.part_list else ()
    unknown = sorted(set(args.part_list) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {', '.join(unknown)} (choose from {', '.join(PARTS)})")
    if args.garment_cache_mb is None:
        from ootd.garment_cache import DEFAULT_GARMENT_CACHE_MB

        args.garment_cache_mb = DEFAULT_GARMENT_CACHE_MB
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def cache_note(cache: dict[str, Any]) -> str:
    resident = cache["resident_after_drop"]
    share = "unknown" if resident is None else f"{100 * resident:.0f} %"
    return f"drop_caches {cache['drop_caches']}, fadvise DONTNEED; {share} of the files still cached"


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


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark (or, with the hidden --child-root, the warm-up child) and return the report."""
    args = parse_args(argv)
    if args.child_root is not None:
        child_main(args)
        return ""
    device = torch.device(args.device)
    start = time.perf_counter()
    libraries = versions()  # imports diffusers, transformers and onnxruntime
    imports = time.perf_counter() - start
    setup = {
        "device": device_name(device),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        **libraries,
        "arguments": " ".join(sys.argv[1:] if argv is None else argv) or "(none)",
        "networks": RUN_DEFAULTS[args.size]["networks"],
        "tree": "builder.to_fp16's form, written directly: UNets and VAE float16, text encoder float32 "
        "(safetensors), CLIP as published",
        "tokenizer": "tiny (tiny_checkpoints.diffusion; ids within CLIP's vocabulary, same prompt lengths)",
        "mask": "fixed torso rectangle (pose and parsing are timed on their own)",
        "repetitions": args.reps,
        "garment cache": f"{args.garment_cache_mb:g} MB, one for all model types",
    }
    report: dict[str, Any] = {
        "setup": setup, "load": {}, "memory": [], "budget": [], "configs": [], "first": {}, "compile": {},
        "encoding": {}, "request": {"height": args.height, "width": args.width, "steps": args.steps},
    }  # fmt: skip
    files = ReportFiles(report, [args.results_dir] + ([args.out] if args.out is not None else []))
    run = Run(args.budget_s, on_change=lambda _: files.save(), on_end=lambda _: free_memory(), log=log)
    report["run"] = run
    with tempfile.TemporaryDirectory(prefix="bench-gpu-", dir=args.workdir) as scratch:
        requested = getattr(torch, args.dtype) if args.dtype else None
        bench = Bench(args, device, requested, Path(scratch), report, run)
        bench.measured["imports"] = imports
        run.part("write-tree", lambda: part_write_tree(bench), gated=False)
        run.part("load", lambda: part_load(bench), needs=NEEDS["load"], gated=False)
        for name in PARTS:
            if name not in args.part_list:
                run.skip(name, "not asked (--with-fp32 runs it)" if name == "fp32" else "not asked (--parts)")
                continue
            work = PART_WORK[name]
            run.part(name, lambda work=work: work(bench), bench.estimate(name), NEEDS.get(name, ()))
        bench.free_pipelines()
    text = files.save(ended=True)
    print(text, flush=True)
    for path in files.paths:
        log(f"wrote {path}")
    return text


if __name__ == "__main__":
    main()

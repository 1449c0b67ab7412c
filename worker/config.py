"""Worker settings read from the environment.

Every limit that protects the worker (download size and time, pixel count, result size) is a
setting so that an operator can tune it per endpoint and tests can make it small; the
defaults are what a RunPod endpoint should run with. Read once per job (cheap), so a test can
change the environment between jobs without reloading the models.
"""

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from core.vocabulary import MODEL_TYPES, Size, parse_model_types, parse_size, size_name
from ootd.garment_cache import DEFAULT_GARMENT_CACHE_MB
from worker.house_masks import DEFAULT_HOUSE_MASK_CACHE_MB

REPO_ROOT = Path(__file__).resolve().parent.parent

# Where the Docker image bakes weights (all of them, only CLIP, or none: a build argument).
DEFAULT_BAKED_WEIGHTS_DIR = "/weights"
# Where RunPod mounts the Hugging Face repos an endpoint caches (the hub cache layout).
RUNPOD_HF_HUB_CACHE = "/runpod-volume/huggingface-cache/hub"
DEFAULT_MODEL_IMAGES_DIR = REPO_ROOT / "assets" / "models"
MB = 1_000_000
# Where human parsing may be told to run (PARSING_DEVICE); unset, it runs where torch has CUDA.
PARSING_DEVICES = ("cuda", "cpu")


@dataclass(frozen=True)
class Settings:
    """Everything the worker reads from its environment (the README lists the names)."""

    # Weights: an explicit CHECKPOINTS_DIR is the only place looked; without it each part is
    # taken from the baked folder when complete there, else from the Hugging Face cache.
    checkpoints_dir: Path | None = None
    baked_weights_dir: Path = Path(DEFAULT_BAKED_WEIGHTS_DIR)
    hf_hub_cache: Path = Path(RUNPOD_HF_HUB_CACHE)
    model_types: tuple[str, ...] = MODEL_TYPES
    model_images_dir: Path = DEFAULT_MODEL_IMAGES_DIR
    # Input images (URL downloads and base64 alike).
    max_input_bytes: int = 20 * MB
    max_input_pixels: int = 50_000_000
    download_connect_timeout: float = 10.0
    # All of a job's downloads together (connecting included), however many pictures it fetches.
    download_timeout: float = 30.0
    download_max_redirects: int = 3
    # Results: RunPod refuses results over 10 MB (/run) or 20 MB (/runsync); the worker cannot
    # tell which route a job came by, so the default is the stricter one.
    max_inline_bytes: int = 10 * MB
    # output_size "input" returns the person photo's own size, scaled down to at most this many
    # megapixels (a 4000x3000 phone photo is 12).
    max_output_megapixels: float = 12.0
    # Send a progress update every this many diffusion steps (never on the last one).
    progress_every: int = 5
    # "HxW" output sizes allowed beyond the published three (3:4, multiples of 64), e.g. "256x192"
    # so that CPU tests on the tiny checkpoints take a second instead of a minute.
    extra_resolutions: tuple[str, ...] = ()
    # Without CUDA the worker refuses to start (it would load ~15 GB of fp32 weights into RAM and
    # time out on every job); local CPU runs, demos and tests opt in.
    allow_cpu: bool = False
    # One short run of every GPU stage after loading, so the first job does not pay for kernel
    # selection and allocator growth (worker/warmup.py).
    warmup: bool = True
    # Caches (0 disables either): a garment's conditioning on the GPU (ootd/garment_cache.py) and
    # a house photo's mask in host memory (worker/house_masks.py), in MB; optionally every
    # house photo's masks computed at start-up for the default fit and resolution.
    garment_cache_mb: int = DEFAULT_GARMENT_CACHE_MB
    house_mask_cache_mb: int = DEFAULT_HOUSE_MASK_CACHE_MB
    precompute_house_masks: bool = False
    # torch.compile of the try-on UNet (ootd/compile.py): off until a GPU measurement pays for
    # its compile time at cold start (bench/README.md). Needs a C compiler at run time, which the
    # image lacks: refused at start without one (worker/compiler.py).
    compile: bool = False
    # Where human parsing (onnxruntime) runs: None follows the GPU (CUDA where torch has it);
    # "cpu" on purpose, e.g. on a host where onnxruntime's CUDA provider cannot load.
    parsing_device: str | None = None

    @property
    def max_output_pixels(self) -> int:
        """`max_output_megapixels` in pixels (at least one)."""
        return max(1, int(self.max_output_megapixels * 1_000_000))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from `env` (default `os.environ`); a malformed value raises ValueError."""
        env = os.environ if env is None else env
        return cls(
            checkpoints_dir=_optional_path(env.get("CHECKPOINTS_DIR")),
            baked_weights_dir=Path(env.get("BAKED_WEIGHTS_DIR") or DEFAULT_BAKED_WEIGHTS_DIR),
            # Hugging Face's own variable, so a cache laid out by its tools is found as-is.
            hf_hub_cache=Path(env.get("HF_HUB_CACHE") or RUNPOD_HF_HUB_CACHE),
            model_types=_model_types(env.get("OOTD_MODEL_TYPES") or ",".join(MODEL_TYPES)),
            model_images_dir=Path(env.get("MODEL_IMAGES_DIR") or DEFAULT_MODEL_IMAGES_DIR),
            max_input_bytes=_positive(env, "MAX_INPUT_BYTES", cls.max_input_bytes, int),
            max_input_pixels=_positive(env, "MAX_INPUT_PIXELS", cls.max_input_pixels, int),
            download_connect_timeout=_positive(
                env, "DOWNLOAD_CONNECT_TIMEOUT", cls.download_connect_timeout, float
            ),
            download_timeout=_positive(env, "DOWNLOAD_TIMEOUT", cls.download_timeout, float),
            download_max_redirects=_positive(
                env, "DOWNLOAD_MAX_REDIRECTS", cls.download_max_redirects, int, allow_zero=True
            ),
            max_inline_bytes=_positive(env, "MAX_INLINE_BYTES", cls.max_inline_bytes, int),
            max_output_megapixels=_positive(env, "MAX_OUTPUT_MEGAPIXELS", cls.max_output_megapixels, float),
            progress_every=_positive(env, "PROGRESS_EVERY", cls.progress_every, int),
            extra_resolutions=_resolutions(env.get("EXTRA_RESOLUTIONS") or ""),
            allow_cpu=_flag(env, "ALLOW_CPU", cls.allow_cpu),
            warmup=_flag(env, "WARMUP", cls.warmup),
            garment_cache_mb=_positive(env, "GARMENT_CACHE_MB", cls.garment_cache_mb, int, allow_zero=True),
            house_mask_cache_mb=_positive(
                env, "HOUSE_MASK_CACHE_MB", cls.house_mask_cache_mb, int, allow_zero=True
            ),
            precompute_house_masks=_flag(env, "PRECOMPUTE_HOUSE_MASKS", cls.precompute_house_masks),
            compile=_flag(env, "OOTD_COMPILE", cls.compile),
            parsing_device=_choice(env, "PARSING_DEVICE", PARSING_DEVICES),
        )


def _optional_path(raw: str | None) -> Path | None:
    """A path from a variable, or None when it is unset or blank (so "set explicitly" means set)."""
    return Path(raw.strip()) if raw and raw.strip() else None


def _model_types(raw: str) -> tuple[str, ...]:
    """Parse "hd,dc" into ("hd", "dc"), refusing unknown names and an empty list."""
    try:
        return parse_model_types(raw)
    except ValueError:
        raise ValueError(
            f"OOTD_MODEL_TYPES must be a comma-separated subset of {', '.join(MODEL_TYPES)}, not {raw!r}"
        ) from None


def _resolutions(raw: str) -> tuple[str, ...]:
    """Parse "256x192,128x96": each "HxW" a 3:4 portrait in multiples of 64 (what the model takes)."""
    names = []
    for part in (part.strip() for part in raw.split(",") if part.strip()):
        try:
            width, height = parse_size(part)
        except ValueError:
            width = height = 0
        if width * 4 != height * 3 or width % 64 or height % 64 or width == 0:
            raise ValueError(
                f"EXTRA_RESOLUTIONS entries must be HxW, 3:4 and multiples of 64 (like 256x192), not {part!r}"
            )
        names.append(size_name(Size(width, height)))
    return tuple(names)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """Read a yes/no setting ("true"/"false", "1"/"0", "yes"/"no", "on"/"off"), else `default`."""
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE or raw in _FALSE:
        return raw in _TRUE
    raise ValueError(f"{name} must be true or false, not {env[name]!r}")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    """One of `choices` (case and spaces ignored), or None when the variable is unset or blank."""
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return None
    if raw not in choices:
        raise ValueError(f"{name} must be {' or '.join(choices)}, not {env[name]!r}")
    return raw


def _positive(env: Mapping[str, str], name: str, default, kind, *, allow_zero: bool = False):
    """Read a number > 0 (or >= 0) from `env[name]`, else `default`."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {raw!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {raw!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, not {raw!r}")
    return value

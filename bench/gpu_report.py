"""The markdown report of `bench.gpu`: the parts and their outcome first, then a table per section.

Sections appear once their part has measured something; the parts table says, for every part,
whether it ended done, failed (with its error) or skipped (with the reason), so a table that
is missing or short is always explained there. The file is rewritten whenever a part starts or
ends (`ReportFiles`), so a run stopped from outside leaves what it measured and the part it
was in.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.budget import RUNNING, Run

GB = 1e9
PART_TITLES: dict[str, str] = {
    "write-tree": "write the checkpoint tree (fp16 form) and the preprocessing networks",
    "load": "load hd, the preprocessor; other model types built in memory",
    "requests": "first request; garment cache filled; guidance x samples, per stage; memory budget",
    "child": "fresh process: load, warm_up(), first and second request",
    "cold-load": "hd from its fp16 files, page cache dropped first",
    "compile": "compile_pipeline: eager vs compiled request and step, compile time",
    "encoding": "4 pictures encoded sequentially vs in the worker's threads",
    "weights": "bytes fp32 vs fp16 from the parameter counts",
    "fp32": "hub fp32 files: write, cold load, builder.to_fp16",
}
OUTPUT_FORMAT = "png"  # the worker's default output_format
STAGES: tuple[tuple[str, str], ...] = (
    ("pose", "pose"),
    ("parsing", "parsing"),
    ("clip", "CLIP"),
    ("vae_encode", "VAE encodes"),
    ("garment_unet", "garment UNet"),
    ("step", "mean step"),
    ("vae_decode", "VAE decode"),
    ("encode", f"{OUTPUT_FORMAT} encoding"),
)
"""Timed stages of a request (key, column), in the order they run. A cached garment skips CLIP,
one of the three VAE encodes and the garment UNet."""
PEAK_KEYS = ("peak_allocated", "peak_reserved", "peak_device_used")


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def status_line(run: Run, ended: bool) -> str:
    running = [name for name, outcome in run.outcomes.items() if outcome.status == RUNNING]
    if ended:
        return f"Status: ended after {run.elapsed():.0f} s: {run.summary()}."
    now = f"running {running[0]}" if running else "between parts"
    return (
        f"Status: in progress ({now}, {run.elapsed():.0f} s in): {run.summary()}. If this is the "
        "last version of the file, the run was stopped from outside: parts not listed did not run."
    )


def render(report: dict[str, Any], ended: bool = False) -> str:
    """The markdown report; sections with nothing measured yet are left out."""
    run: Run = report["run"]
    setup = report["setup"]
    lines = [f"# bench.gpu: {setup['device']} ({setup['date']})", "", status_line(run, ended), ""]
    lines.append(
        f"Budget: {run.budget_s:.0f} s for the whole run (`--budget-s`); a part starts if its estimate fits."
    )
    parts = []
    for name, outcome in run.outcomes.items():
        seconds = "" if outcome.seconds is None else f"{outcome.seconds:.1f}"
        cpu = "" if outcome.cpu_seconds is None else f"{outcome.cpu_seconds:.1f}"
        guess = outcome.estimate
        estimate = "" if guess is None else f"~{guess.seconds:.0f} s: {guess.basis}"
        parts.append([name, PART_TITLES.get(name, ""), outcome.status, seconds, cpu, estimate, outcome.note])
    header = ["part", "what", "status", "seconds", "CPU seconds", "estimate (gate)", "note"]
    lines += _table("Parts, in run order", header, parts)
    lines += _table("Setup", ["item", "value"], [[key, str(value)] for key, value in setup.items()])
    if report["load"]:
        rows = [[name, _s(seconds), note] for name, (seconds, note) in report["load"].items()]
        lines += _table("Load (one model type from files)", ["what", "seconds", "note"], rows)
    if report["memory"]:
        rows = []
        for when, memory in report["memory"]:
            if memory is None:
                rows.append([when, "n/a", "n/a", "n/a (not a CUDA device)"])
            else:
                used = f"{_gib(memory['device_used'])} of {_gib(memory['device_total'])}"
                rows.append([when, _gib(memory["allocated"]), _gib(memory["reserved"]), used])
        header = ["when", "torch allocated", "torch reserved", "device used (driver)"]
        lines += _table("Memory (GiB)", header, rows)
    if report["budget"]:
        rows = [[item, _gib(gib), note] for item, gib, note in report["budget"]]
        lines += _table("Memory budget of one worker (GiB)", ["item", "GiB", "note"], rows)
    if report["configs"]:
        lines += _requests(report)
    if report["first"]:
        rows = [[name, _s(seconds), note] for name, (seconds, note) in report["first"].items()]
        lines += _table(
            "First request vs later (hd, guidance 2, 1 sample)", ["what", "seconds", "note"], rows
        )
    if report["compile"]:
        rows = [[name, _s(seconds), note] for name, (seconds, note) in report["compile"].items()]
        lines += _table("Compile (hd try-on UNet, guidance 2, 1 sample)", ["what", "seconds", "note"], rows)
    if report["encoding"]:
        rows = [
            [fmt, _s(sequential), _s(parallel), f"{sequential / parallel:.2f}x"]
            for fmt, (sequential, parallel) in report["encoding"].items()
        ]
        header = ["format", "sequential s", "worker threads s", "speed-up"]
        lines += _table("Output encoding, 4 pictures at 768x1024, this host's CPUs", header, rows)
    if "weights" in report:
        weights = report["weights"].items()
        rows = [[types, f"{sizes['fp32'] / GB:.2f}", f"{sizes['fp16'] / GB:.2f}"] for types, sizes in weights]
        header = ["model types", "fp32 GB", "after fp16 step GB"]
        lines += _table("Weights (bytes the worker reads, from the real parameter counts)", header, rows)
    return "\n".join(lines) + "\n"


def _requests(report: dict[str, Any]) -> list[str]:
    request = report["request"]
    title = (
        f"Requests (hd, {request['height']}x{request['width']}, {request['steps']} steps; "
        "mean of reps; seconds; garment cache filled)"
    )
    header = [
        "guidance",
        "samples",
        "garment",
        "reps",
        *(label for _, label in STAGES),
        "s/request",
        "s/sample",
    ]
    header += [
        "non-finite outputs",
        "peak allocated GiB",
        "peak reserved GiB",
        "peak device used GiB",
        "note",
    ]
    rows = []
    for row in report["configs"]:
        memory = [_gib(row.get(key)) for key in PEAK_KEYS]
        if "total" in row:
            cells = [_s(row["stages"][key]) for key, _ in STAGES]
            cells += [_s(row["total"]), _s(row["total"] / row["samples"])]
        else:
            word = "OOM" if row.get("oom") else "failed" if "error" in row else "skipped"
            word = "non-finite" if row.get("refused") else word
            cells = [word] * (len(STAGES) + 2)
        cells.append(non_finite_cell(row) if row.get("images") else cells[-1])
        notes = []
        if row.get("refused") and "total" in row:
            finished = row["reps"] - len(row["refused"])
            notes.append(f"times from the {finished} of {row['reps']} reps the pipeline did not refuse")
        if row.get("oom"):
            notes.append(f"out of memory after {row['reps']} of {row['planned']} reps")
        if "error" in row:
            notes.append(f"failed after {row['reps']} of {row['planned']} reps: {row['error']}")
        if "stopped" in row:
            notes.append(f"{row['reps']} of {row['planned']} reps; skipped: {row['stopped']}")
        head = [f"{row['scale']:g}", str(row["samples"]), row["garment"], str(row["reps"])]
        rows.append(head + cells + memory + ["; ".join(notes)])
    return _table(title, header, rows)


def non_finite_cell(row: dict[str, Any]) -> str:
    """A request row's non-finite outputs: the images with NaN or infinity (those of refused
    requests included), the requests the pipeline refused and at which stage, and the float32
    decode retries (mended or not)."""
    text = f"{row['non_finite']} of {row['images']} images"
    if row["refused"]:
        stages = ", ".join(sorted(set(row["refused"])))
        text += f"; {len(row['refused'])} request(s) refused: NonFiniteOutputError ({stages})"
    if row["float32_retries"]:
        text += f"; {row['float32_retries']} decoded again in float32"
    return text


def non_finite_summary(rows: list[dict[str, Any]]) -> str:
    """One phrase for all request rows, for the requests part's note."""
    ran = [row for row in rows if row.get("images")]
    total = {key: sum(row[key] for row in ran) for key in ("images", "non_finite", "float32_retries")}
    refused = [stage for row in ran for stage in row["refused"]]
    if not total["non_finite"] and not total["float32_retries"]:
        return f"no non-finite output ({total['images']} images)"
    return "non-finite outputs: " + non_finite_cell({**total, "refused": refused})


class ReportFiles:
    """The report's file in each folder, rewritten whenever a part starts or ends: a run stopped
    from outside still leaves the tables of the parts it finished."""

    def __init__(self, report: dict[str, Any], folders: list[Path]) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M")
        words = "".join(c if c.isalnum() else " " for c in report["setup"]["device"].lower()).split()
        self.name = f"gpu-{stamp}-{'-'.join(words)[:40].strip('-')}.md"
        self.report, self.folders = report, folders

    def save(self, ended: bool = False) -> str:
        text = render(self.report, ended)
        for folder in self.folders:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / self.name).write_text(text)
        return text

    @property
    def paths(self) -> list[Path]:
        return [folder / self.name for folder in self.folders]

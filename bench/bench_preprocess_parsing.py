"""CPU time per person image of human parsing with real-size (randomly initialised) SCHP networks.

The published `parsing_atr.onnx` / `parsing_lip.onnx` are SCHP (A-CE2P) exports: a ResNet-101
backbone with a deep stem and a dilated last stage, a PSP context module, a parsing decoder, an
edge branch and a fusion head (~66 M parameters, ~267 MB each). The real weights cannot be
downloaded here, so this script builds that architecture in PyTorch with random weights, exports
it to ONNX at the published input sizes (512 and 473) with the published input name and output
order, and times `preprocess.parsing.HumanParser` on it: the same sessions, pre- and
post-processing the worker runs. Batch norm is folded into the convolutions by onnxruntime, as it
is for the real export, so the arithmetic matches the real networks; only the weights differ.

    .venv/bin/python -m bench.bench_preprocess_parsing [--runs 5] [--threads N] [--out DIR]
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from preprocess.labels import ATR_NUM_CLASSES, LIP_NUM_CLASSES
from preprocess.layout import PARSING_ATR, PARSING_LIP
from preprocess.parsing import INPUT_NAME, PARSE_SIZE, HumanParser


def norm_act(channels: int) -> nn.Sequential:
    """SCHP's InPlaceABN: batch norm followed by leaky ReLU (slope 0.01)."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.LeakyReLU(0.01))


def conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, pad, dilation=dilation, bias=False), norm_act(cout)
    )


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3 dilated, 1x1 x4) with a projection shortcut when needed."""

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, planes, 1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(),
            nn.Conv2d(planes, planes, 3, stride, dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(),
            nn.Conv2d(planes, planes * 4, 1, bias=False),
            nn.BatchNorm2d(planes * 4),
        )
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
            if stride != 1 or cin != planes * 4
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def stage(cin: int, planes: int, blocks: int, stride: int, dilation: int = 1) -> nn.Sequential:
    layers = [Bottleneck(cin, planes, stride, dilation)]
    layers += [Bottleneck(planes * 4, planes, 1, dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def bin_average(x: torch.Tensor, bins: int) -> torch.Tensor:
    """Adaptive average pooling written as explicit bins (exportable for any input size)."""
    h, w = x.shape[-2:]
    rows = []
    for i in range(bins):
        r0, r1 = (i * h) // bins, -((-(i + 1) * h) // bins)
        cols = []
        for j in range(bins):
            c0, c1 = (j * w) // bins, -((-(j + 1) * w) // bins)
            cols.append(x[:, :, r0:r1, c0:c1].mean(dim=(2, 3), keepdim=True))
        rows.append(torch.cat(cols, dim=3))
    return torch.cat(rows, dim=2)


PRIOR_LOGIT = 1e3
"""What a prior label adds to its class's logit: far above what the random layers produce."""


class SchpLike(nn.Module):
    """SCHP's A-CE2P network shape: outputs [parsing logits, fusion logits, edge logits] at 1/4.

    With `prior` (a label map at the output size), the parsing and fusion logits get
    `PRIOR_LOGIT` added at each pixel's prior label, so the network reports that reading for every
    image while still doing all of SCHP's arithmetic: benchmarks of whole jobs need a person with
    clothes to build a mask from, which random weights never report.
    """

    def __init__(self, num_classes: int, prior: np.ndarray | None = None) -> None:
        super().__init__()
        if prior is not None:
            one_hot = F.one_hot(torch.as_tensor(prior, dtype=torch.long), num_classes).permute(2, 0, 1)
            self.register_buffer("prior_logits", PRIOR_LOGIT * one_hot[None].float())
        else:
            self.prior_logits = None
        self.stem = nn.Sequential(
            conv_bn(3, 64, 3, stride=2), conv_bn(64, 64, 3), conv_bn(64, 128, 3), nn.MaxPool2d(3, 2, 1)
        )
        self.layer1 = stage(128, 64, 3, 1)
        self.layer2 = stage(256, 128, 4, 2)
        self.layer3 = stage(512, 256, 23, 2)
        self.layer4 = stage(1024, 512, 3, 1, dilation=2)
        self.psp_bins = (1, 2, 3, 6)
        self.psp = nn.ModuleList(conv_bn(2048, 512) for _ in self.psp_bins)
        self.psp_out = conv_bn(2048 + 4 * 512, 512, 3)
        self.dec_top, self.dec_low = conv_bn(512, 256), conv_bn(256, 48)
        self.dec_mix = nn.Sequential(conv_bn(304, 256), conv_bn(256, 256))
        self.dec_cls = nn.Conv2d(256, num_classes, 1)
        self.edge_in = nn.ModuleList(conv_bn(c, 256) for c in (256, 512, 1024))
        self.edge_cls = nn.Conv2d(256, 2, 3, padding=1)
        self.edge_mix = nn.Conv2d(6, 2, 1)
        self.fusion = nn.Sequential(conv_bn(1024, 256), nn.Conv2d(256, num_classes, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x2 = self.layer1(self.stem(x))
        x3 = self.layer2(x2)
        x4 = self.layer3(x3)
        x5 = self.layer4(x4)
        size5, size2 = x5.shape[-2:], x2.shape[-2:]

        def up(t: torch.Tensor, size: torch.Size) -> torch.Tensor:
            return F.interpolate(t, size=size, mode="bilinear", align_corners=True)

        priors = [
            up(conv(bin_average(x5, b)), size5) for conv, b in zip(self.psp, self.psp_bins, strict=True)
        ]
        context = self.psp_out(torch.cat([*priors, x5], dim=1))
        parsing_fea = self.dec_mix(torch.cat([up(self.dec_top(context), size2), self.dec_low(x2)], dim=1))
        parsing = self.dec_cls(parsing_fea)
        edge_feas = [conv(t) for conv, t in zip(self.edge_in, (x2, x3, x4), strict=True)]
        edges = [up(self.edge_cls(f), size2) for f in edge_feas]
        edge = self.edge_mix(torch.cat(edges, dim=1))
        edge_fea = torch.cat([edge_feas[0]] + [up(f, size2) for f in edge_feas[1:]], dim=1)
        fusion = self.fusion(torch.cat([parsing_fea, edge_fea], dim=1))
        if self.prior_logits is not None:
            parsing, fusion = parsing + self.prior_logits, fusion + self.prior_logits
        return parsing, fusion, edge


def export(path: Path, num_classes: int, size: int, seed: int, prior: np.ndarray | None = None) -> int:
    """Write one random real-size network (reporting `prior` if given) as ONNX; returns its
    parameter count."""
    torch.manual_seed(seed)
    model = SchpLike(num_classes, prior).eval()
    for module in model.modules():  # non-trivial batch-norm statistics, as in a trained model
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, size, size),),
            str(path),
            input_names=[INPUT_NAME],
            output_names=["parsing", "fusion", "edge"],
            opset_version=17,
            dynamo=False,
        )
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="timed images after one warm-up")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = all cores)")
    parser.add_argument("--out", type=Path, default=None, help="write results.json here (e.g. bench/results)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        params = export(root / PARSING_ATR, ATR_NUM_CLASSES, 512, seed=0)
        export(root / PARSING_LIP, LIP_NUM_CLASSES, 473, seed=1)
        export_s = time.perf_counter() - start
        sizes_mb = {name: (root / name).stat().st_size / 2**20 for name in (PARSING_ATR, PARSING_LIP)}

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = args.threads
        start = time.perf_counter()
        sessions = [
            ort.InferenceSession(str(root / name), sess_options=options, providers=["CPUExecutionProvider"])
            for name in (PARSING_ATR, PARSING_LIP)
        ]
        load_s = time.perf_counter() - start
        human_parser = HumanParser(*sessions)

        rng = np.random.default_rng(0)
        photo = Image.fromarray(rng.integers(0, 256, (PARSE_SIZE[1], PARSE_SIZE[0], 3), dtype=np.uint8))
        human_parser(photo)  # warm-up
        per_image = []
        per_network: dict[str, list[float]] = {"atr": [], "lip": []}
        for _ in range(args.runs):
            start = time.perf_counter()
            human_parser(photo)
            per_image.append(time.perf_counter() - start)
        for key, session, size in (("atr", sessions[0], 512), ("lip", sessions[1], 473)):
            feed = {INPUT_NAME: rng.normal(size=(1, 3, size, size)).astype(np.float32)}
            for _ in range(args.runs):
                start = time.perf_counter()
                session.run(None, feed)
                per_network[key].append(time.perf_counter() - start)

    results = {
        "device": f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores",
        "onnxruntime": ort.__version__,
        "threads": args.threads or "all",
        "parameters_per_network_millions": round(params / 1e6, 1),
        "onnx_file_mb": {k: round(v, 1) for k, v in sizes_mb.items()},
        "export_s": round(export_s, 1),
        "session_load_s": round(load_s, 2),
        "parse_per_image_s": {
            "median": round(statistics.median(per_image), 3),
            "min": round(min(per_image), 3),
        },
        "network_only_s": {k: round(statistics.median(v), 3) for k, v in per_network.items()},
        "runs": args.runs,
    }
    print(json.dumps(results, indent=2))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "preprocess_parsing.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

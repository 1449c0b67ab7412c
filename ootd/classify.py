"""Zero-shot garment category from CLIP: which of upper body, lower body, dress a garment is.

The hub file of `openai/clip-vit-large-patch14` holds both CLIP towers; the pipeline loads the
vision tower (its projected image embedding conditions both UNets). The text tower, from the same
file, embeds a few prompts per category once, at start-up; only those embeddings are kept (the
tower is dropped again). A garment's category is then the softmax over its image embedding's
cosine similarity to each category's mean prompt embedding, scaled by CLIP's own learned
`logit_scale` (read from the same file), exactly CLIP's zero-shot recipe. The image embedding is
the one the pipeline computes for conditioning anyway (`OOTDiffusionPipeline.garment_image_embeds`),
so classifying costs no second pass through the vision tower.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from core.vocabulary import PUBLISHED_CATEGORIES

# A handful of prompts per category (published names), CLIP's "a photo of a ..." template.
PROMPTS: dict[str, tuple[str, ...]] = {
    "upper_body": ("a photo of a t-shirt", "a photo of a shirt", "a photo of a blouse",
                   "a photo of a sweater", "a photo of a jacket", "a photo of a top"),
    "lower_body": ("a photo of trousers", "a photo of jeans", "a photo of shorts",
                   "a photo of a skirt", "a photo of pants"),
    "dresses": ("a photo of a dress", "a photo of a long dress", "a photo of a summer dress",
                "a photo of an evening gown"),
}  # fmt: skip
CLIP_WEIGHTS = "model.safetensors"
CLIP_VISION_TOWER_PREFIXES: tuple[str, ...] = ("vision_model.", "visual_projection.", "logit_scale")


class _ClipTextTower(CLIPTextModelWithProjection):
    """CLIP's text tower, read from the file that holds both towers.

    The vision half of the file (and `logit_scale`, read here on its own) is not this model's, so
    transformers is told so: it no longer lists those keys as unexpected in a table at every
    start. Any other unexpected or missing key is still reported, and refused by `from_clip`.
    """

    _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = [
        f"^{re.escape(prefix)}" for prefix in CLIP_VISION_TOWER_PREFIXES
    ]


@dataclass(frozen=True)
class CategoryGuess:
    """The chosen category (a published name) and every category's probability."""

    category: str
    scores: dict[str, float]


class GarmentClassifier:
    """Holds one unit text embedding per category and CLIP's logit scale; classifies image embeddings."""

    def __init__(self, text_embeds: Mapping[str, torch.Tensor], logit_scale: float) -> None:
        if tuple(text_embeds) != PUBLISHED_CATEGORIES:
            raise ValueError(f"text_embeds must be given for {', '.join(PUBLISHED_CATEGORIES)} in that order")
        self.categories: tuple[str, ...] = tuple(text_embeds)
        stacked = torch.stack([text_embeds[category].float().cpu() for category in self.categories])
        self.text_embeds = F.normalize(stacked, dim=-1)
        self.logit_scale = float(logit_scale)

    @classmethod
    @torch.inference_mode()
    def from_clip(
        cls,
        clip_dir: str | Path,
        tokenizer: CLIPTokenizer,
        prompts: Mapping[str, Sequence[str]] = PROMPTS,
        device: str | torch.device = "cpu",
    ) -> GarmentClassifier:
        """Embed `prompts` with CLIP's text tower from `clip_dir` (the hub file's other half).

        `tokenizer` is the pipeline's (Stable Diffusion's tokenizer is CLIP ViT-L/14's own; the
        CLIP repo's copy is not among the files the worker fetches)."""
        clip_dir = Path(clip_dir)
        model, info = _ClipTextTower.from_pretrained(
            clip_dir, dtype=torch.float32, local_files_only=True, output_loading_info=True
        )
        if info["missing_keys"] or info["unexpected_keys"]:
            raise ValueError(f"CLIP text tower in {clip_dir}: missing {sorted(info['missing_keys'])[:3]}, "
                             f"unexpected {sorted(info['unexpected_keys'])[:3]}")  # fmt: skip
        model = model.to(device).eval()
        embeds = {}
        for category in PUBLISHED_CATEGORIES:
            ids = tokenizer(
                list(prompts[category]), padding="max_length", truncation=True,
                max_length=tokenizer.model_max_length, return_tensors="pt",
            ).input_ids  # fmt: skip
            each = F.normalize(model(ids.to(device)).text_embeds.float(), dim=-1)
            embeds[category] = each.mean(dim=0)
        with safe_open(str(clip_dir / CLIP_WEIGHTS), "pt") as weights:
            logit_scale = weights.get_tensor("logit_scale").float().exp().item()
        return cls(embeds, logit_scale)

    def classify(self, image_embeds: torch.Tensor) -> CategoryGuess:
        """The category of one garment from its projected CLIP image embedding ((D,) or (1, D))."""
        image = F.normalize(image_embeds.detach().float().cpu().reshape(1, -1), dim=-1)
        if image.shape[1] != self.text_embeds.shape[1]:
            width = self.text_embeds.shape[1]
            raise ValueError(f"image_embeds must have {width} values, got {image.shape[1]}")
        probabilities = (self.logit_scale * image @ self.text_embeds.T).softmax(dim=-1)[0]
        pairs = zip(self.categories, probabilities.tolist(), strict=True)
        scores = {category: round(probability, 4) for category, probability in pairs}
        return CategoryGuess(category=self.categories[int(probabilities.argmax())], scores=scores)

"""CLIP's text tower (category "auto") read from the file that holds both towers: no table of the
vision keys in the start-up log, and a key that really does not fit is still refused."""

import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from transformers import CLIPTokenizer

from ootd.classify import CLIP_WEIGHTS, GarmentClassifier

CLIP = "clip-vit-large-patch14"


@pytest.fixture(scope="module")
def tokenizer(tiny_root: Path) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(tiny_root / "ootd" / "tokenizer")


def clip_copy(tiny_root: Path, folder: Path, change) -> Path:
    """The tiny CLIP folder with its weights file changed by `change(tensors)`."""
    shutil.copytree(tiny_root / CLIP, folder)
    tensors = load_file(folder / CLIP_WEIGHTS)
    change(tensors)
    save_file(tensors, folder / CLIP_WEIGHTS, metadata={"format": "pt"})
    return folder


def test_the_vision_half_of_the_file_is_not_reported(tiny_root: Path, tokenizer, capfd) -> None:
    capfd.readouterr()
    GarmentClassifier.from_clip(tiny_root / CLIP, tokenizer)
    err = capfd.readouterr().err
    assert "vision_model." not in err and "UNEXPECTED" not in err and "LOAD REPORT" not in err, err


def test_a_text_key_that_does_not_fit_is_still_refused(tiny_root: Path, tmp_path: Path, tokenizer) -> None:
    def extra(tensors):
        tensors["text_model.encoder.extra.weight"] = tensors["text_projection.weight"].clone()

    with pytest.raises(ValueError, match=r"unexpected \['text_model\.encoder\.extra\.weight'\]"):
        GarmentClassifier.from_clip(clip_copy(tiny_root, tmp_path / "extra", extra), tokenizer)

    def missing(tensors):
        del tensors["text_projection.weight"]

    with pytest.raises(ValueError, match=r"missing \['text_projection\.weight'\]"):
        GarmentClassifier.from_clip(clip_copy(tiny_root, tmp_path / "missing", missing), tokenizer)

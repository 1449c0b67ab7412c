"""`garment_photo_type`: a garment worn by a person is cut out onto white before conditioning.

The cut-out is checked on synthetic parse maps (as the mask tests do): exactly the garment's
pixels, on white, cropped and padded to 3:4. `auto` is checked with a parser that reports a
person or none. End to end, the handler runs on the tiny tree with the real label pass-through
ONNX parsers of `test_parsing` (the garment "photo" encodes its own labels), so the parse of the
garment photo is known.
"""

import base64
import io

import numpy as np
import pytest
from PIL import Image
from test_parsing import encode_labels, person_labels, write_passthrough_parsers
from worker_support import data_uri

from core.images import WHITE
from core.vocabulary import MODEL_FRAME
from preprocess import NoWornGarmentError, Preprocessor
from preprocess import labels as L
from preprocess.garment import PERSON_MIN_SHARE, extract_garment, person_in_parse
from preprocess.parsing import PARSE_SIZE, HumanParser

H, W = PARSE_SIZE[1], PARSE_SIZE[0]


def worn_parse() -> np.ndarray:
    """A person in a top (rows 100-219, cols 120-259) and trousers, on background."""
    parse = np.zeros((H, W), np.uint8)
    parse[40:100, 160:220] = L.FACE
    parse[100:220, 120:260] = L.UPPER_CLOTHES
    parse[110:300, 90:120] = L.RIGHT_ARM
    parse[220:400, 140:240] = L.PANTS
    return parse


def noisy_photo(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 250, (H, W, 3), dtype=np.uint8))


def test_the_cut_out_holds_exactly_the_garment_pixels_on_white_in_a_3_4_frame() -> None:
    photo, parse = noisy_photo(), worn_parse()
    cut = extract_garment(photo, parse, "upper_body")
    # 140x120 of garment -> a 140x187 canvas (3:4 to the pixel), the garment centred in it.
    assert cut.mode == "RGB" and cut.size == (140, 187)
    assert abs(cut.width / cut.height - MODEL_FRAME.width / MODEL_FRAME.height) < 0.01
    top = (187 - 120) // 2
    pixels = np.asarray(cut)
    np.testing.assert_array_equal(pixels[top : top + 120], np.asarray(photo)[100:220, 120:260])
    assert (pixels[:top] == WHITE).all() and (pixels[top + 120 :] == WHITE).all()


def test_a_parse_of_another_size_is_scaled_to_the_photo_and_other_labels_turn_white() -> None:
    photo = noisy_photo(1).resize((W * 2, H * 2), Image.Resampling.NEAREST)
    parse = worn_parse()
    parse[150:160, 150:160] = L.BELT  # a hole in the garment: white in the cut-out
    cut = np.asarray(extract_garment(photo, parse, "lower_body"))
    # Trousers: 180x100 in the parse -> 360x200 in the photo, padded to 270 wide.
    assert cut.shape == (360, 270, 3)
    np.testing.assert_array_equal(cut[:, 35:235], np.asarray(photo)[440:800, 280:480])
    assert (cut[:, :35] == WHITE).all() and (cut[:, 235:] == WHITE).all()
    top = extract_garment(photo, parse, "upper_body")
    assert (np.asarray(top) == WHITE).all(axis=2).sum() > 0  # the belt hole


def test_a_worn_photo_without_that_category_is_the_typed_error() -> None:
    parse = worn_parse()
    with pytest.raises(NoWornGarmentError, match="no dresses garment found on the person"):
        extract_garment(noisy_photo(), np.where(parse == L.UPPER_CLOTHES, L.FACE, parse), "dresses")


def test_a_person_is_skin_or_hair_over_a_small_share_of_the_photo() -> None:
    assert person_in_parse(worn_parse())
    flat = np.zeros((H, W), np.uint8)
    flat[100:400, 80:300] = L.UPPER_CLOTHES
    assert not person_in_parse(flat)
    stray = flat.copy()
    stray.flat[: int(PERSON_MIN_SHARE * flat.size) - 1] = L.LEFT_ARM  # just under the share
    assert not person_in_parse(stray)


class FixedParser:
    """A parser that returns a given map (and counts its calls)."""

    def __init__(self, parse: np.ndarray) -> None:
        self.parse, self.calls = parse, 0

    def __call__(self, image: Image.Image) -> np.ndarray:
        assert image.size == PARSE_SIZE
        self.calls += 1
        return self.parse


def test_auto_picks_model_when_a_person_is_found_and_flat_otherwise() -> None:
    photo = noisy_photo()
    worn = Preprocessor(pose=None, parser=FixedParser(worn_parse())).garment(photo, "upper_body", "auto")
    assert worn.photo_type == "model" and worn.image.size == (140, 187)
    flat_parse = np.zeros((H, W), np.uint8)
    flat_parse[100:400, 80:300] = L.UPPER_CLOTHES
    flat = Preprocessor(pose=None, parser=FixedParser(flat_parse)).garment(photo, "upper_body", "auto")
    assert flat.photo_type == "flat" and list(flat.image.getdata()) == list(photo.getdata())


def test_flat_never_parses_and_model_always_cuts_out() -> None:
    parser = FixedParser(worn_parse())
    preprocessor = Preprocessor(pose=None, parser=parser)
    assert preprocessor.garment(noisy_photo(), "upper_body").photo_type == "flat" and parser.calls == 0
    assert preprocessor.garment(noisy_photo(), "lower_body", "model").image.size == (135, 180)  # 3:4
    with pytest.raises(ValueError, match="photo_type must be one of flat, model, auto"):
        preprocessor.garment(noisy_photo(), "upper_body", "worn")


# ------------------------------------------------------------------------------ through the handler
@pytest.fixture(scope="module")
def passthrough_runtime(tiny_root, tmp_path_factory):
    """The tiny pipelines with a preprocessor whose parser reads labels from the photo."""
    from worker.runtime import Runtime, load_runtime

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHECKPOINTS_DIR", str(tiny_root))
        patch.setenv("EXTRA_RESOLUTIONS", "256x192")
        from worker.config import Settings

        settings = Settings.from_env()
        parser = HumanParser.from_checkpoints(write_passthrough_parsers(tmp_path_factory.mktemp("parsers")))
        pipelines = load_runtime(settings).pipelines
        yield Runtime(pipelines, Preprocessor(pose=None, parser=parser), 0.0), settings


def garment_job(photo_type: str, category: str = "upper_body", only: int | None = None, **extra) -> dict:
    mask = Image.new("L", (192, 256), 0)
    mask.paste(255, (40, 60, 150, 200))
    atr, lip = person_labels()
    if only is not None:  # one label everywhere: no edges, where resizing would mix labels
        atr, lip = np.full_like(atr, only), np.zeros_like(lip)
    garment = data_uri(_png(encode_labels(atr, lip)))
    return {
        "id": "worn",
        "input": {
            "person_index": 0, "garment": garment, "mask": data_uri(_png(mask)),
            "model_type": "dc", "category": category, "garment_photo_type": photo_type,
            "resolution": "256x192", "steps": 1, "seed": 3, **extra,
        },
    }  # fmt: skip


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_a_worn_garment_job_reports_the_type_and_returns_the_cut_out(passthrough_runtime) -> None:
    from worker.job import handle

    runtime, settings = passthrough_runtime
    result = handle(garment_job("auto", return_mask=True), runtime, settings)
    assert "error" not in result, result
    assert result["garment_photo_type"] == "model" and "garment" in result["timings"]
    cut = Image.open(io.BytesIO(base64.b64decode(result["garment"]["base64"])))
    assert cut.format == "PNG" and abs(cut.width / cut.height - 0.75) < 0.01
    assert (np.asarray(cut.convert("RGB")) == WHITE).all(axis=2).any()


def test_a_worn_photo_without_the_category_names_the_field(passthrough_runtime) -> None:
    from worker.job import handle

    runtime, settings = passthrough_runtime
    result = handle(garment_job("model", category="lower_body", only=L.FACE), runtime, settings)
    assert result["error"].startswith("garment_photo_type 'model': no lower_body garment found on the person")


def test_the_schema_takes_the_three_types_and_names_the_field() -> None:
    from worker.errors import InputError
    from worker.schema import parse_request

    base = {"person_index": 0, "garment": "https://example.com/g.png"}
    assert parse_request(base, person_count=1).garment_photo_type == "flat"
    worn = parse_request({**base, "garment_photo_type": " Model"}, person_count=1)
    assert worn.garment_photo_type == "model"
    with pytest.raises(InputError, match="garment_photo_type must be one of flat, model, auto, not 'worn'"):
        parse_request({**base, "garment_photo_type": "worn"}, person_count=1)

"""The Preprocessor flow: caller masks, request validation, odd photo modes, and the network path.

The network path runs real onnxruntime sessions: the label pass-through parsers of
`test_parsing` (so the parse map and therefore the mask are known) and the tiny random tree.
"""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_parsing import encode_labels, person_labels, write_passthrough_parsers

from preprocess import (
    NoGarmentRegionError,
    PreprocessError,
    Preprocessor,
    PreprocessResult,
    agnostic_mask,
    load_rgb,
)
from preprocess import labels as L
from preprocess.parsing import HumanParser
from tiny_checkpoints.pose import SKELETON_GRID

SIZE = (768, 1024)
ARMS_DOWN = np.zeros((18, 2))
ARMS_DOWN[2:8] = [(112, 128), (112, 215), (112, 290), (272, 128), (272, 215), (272, 290)]


def quadrant_mask() -> Image.Image:
    """2x2 mask: 0 | 200 over 128 | 127 (only values above 127 mean repaint)."""
    return Image.fromarray(np.array([[0, 200], [128, 127]], np.uint8))


def expected_quadrants(size: tuple[int, int]) -> np.ndarray:
    width, height = size
    out = np.zeros((height, width), np.uint8)
    out[: height // 2, width // 2 :] = 255
    out[height // 2 :, : width // 2] = 255
    return out


def test_user_mask_needs_no_networks() -> None:
    person = Image.new("RGB", (300, 400), (10, 20, 30))
    result = Preprocessor()(person, "dc", "lower_body", mask=quadrant_mask())
    assert isinstance(result, PreprocessResult)
    assert result.keypoints is None and result.parse is None
    assert result.mask.mode == "L" and result.mask.size == SIZE
    np.testing.assert_array_equal(np.asarray(result.mask), expected_quadrants(SIZE))
    assert result.person.mode == "RGB" and result.person.size == SIZE


def test_user_mask_at_another_size_and_in_other_modes() -> None:
    person = Image.new("RGB", (300, 400))
    size = (384, 512)
    pattern = np.asarray(quadrant_mask())
    masks = {
        "RGB": quadrant_mask().convert("RGB"),
        "RGBA": quadrant_mask().convert("RGBA"),
        "I;16": Image.fromarray(pattern.astype(np.uint16) * 257),
    }
    for mode, mask in masks.items():
        assert mask.mode == mode
        result = Preprocessor()(person, mask=mask, size=size)
        np.testing.assert_array_equal(np.asarray(result.mask), expected_quadrants(size))


def test_empty_user_mask_is_a_preprocess_error() -> None:
    with pytest.raises(PreprocessError, match="mask is empty"):
        Preprocessor()(Image.new("RGB", (30, 40)), mask=Image.new("L", (30, 40), 127))


def test_network_path_without_networks_says_so() -> None:
    with pytest.raises(RuntimeError, match="pass a mask"):
        Preprocessor()(Image.new("RGB", (30, 40)))


@pytest.mark.parametrize(
    ("model_type", "category", "message"),
    [
        ("hd", "lower_body", "'hd' supports only category 'upper_body'"),
        ("hd", "dresses", "'hd' supports only category 'upper_body'"),
        ("sd", "upper_body", "model_type"),
        ("dc", "hat", "category"),
    ],
)
def test_unsupported_requests_are_value_errors(model_type: str, category: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Preprocessor()(Image.new("RGB", (30, 40)), model_type, category, mask=quadrant_mask())


def photo_variants() -> dict[str, Image.Image]:
    """The same 300x400 portrait in the modes users send (top half dark, bottom half light)."""
    grey = np.full((400, 300), 230, np.uint8)
    grey[:200] = 20
    variants = {
        "rgba": Image.fromarray(np.dstack([grey] * 3 + [np.full_like(grey, 255)])),
        "greyscale": Image.fromarray(grey),
        "cmyk": Image.fromarray(np.dstack([grey] * 3)).convert("CMYK"),
        "16-bit": Image.fromarray(grey.astype(np.uint16) * 257),
    }
    # EXIF: stored as 400x300 landscape, rotated 90° counter-clockwise; tag 6 turns it back.
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(np.rot90(grey, 1).copy()).save(buffer, "PNG", exif=exif)
    buffer.seek(0)
    variants["exif-rotated"] = Image.open(buffer)
    return variants


@pytest.mark.parametrize("name", ["rgba", "greyscale", "cmyk", "16-bit", "exif-rotated"])
def test_photo_modes_through_the_preprocessor(name: str) -> None:
    photo = photo_variants()[name]
    result = Preprocessor()(photo, mask=quadrant_mask())
    person = np.asarray(result.person).astype(int)
    assert result.person.mode == "RGB" and result.person.size == SIZE
    assert person[:500].mean() < 40 and person[524:].mean() > 210  # upright, dark top, light bottom


@pytest.fixture(scope="module")
def passthrough_parser(tmp_path_factory: pytest.TempPathFactory) -> HumanParser:
    return HumanParser.from_checkpoints(write_passthrough_parsers(tmp_path_factory.mktemp("passthrough")))


def test_parsing_and_mask_path_with_given_keypoints(passthrough_parser: HumanParser) -> None:
    atr, lip = person_labels()
    photo = encode_labels(atr, lip).resize(SIZE, Image.Resampling.NEAREST)  # a 768x1024 upload
    seen: list[tuple[str, tuple[int, int]]] = []

    def pose(image: Image.Image) -> np.ndarray:
        seen.append((image.mode, image.size))
        return ARMS_DOWN

    result = Preprocessor(pose=pose, parser=passthrough_parser)(photo, "hd", "upper_body")
    assert seen == [("RGB", (384, 512))]
    np.testing.assert_array_equal(result.keypoints, ARMS_DOWN)
    # The photo went 768x1024 -> 384x512 (bicubic), so labels are exact away from their edges.
    interior = np.ones(atr.shape, bool)
    edges = np.zeros(atr.shape, bool)
    edges[1:] |= atr[1:] != atr[:-1]
    edges[:, 1:] |= atr[:, 1:] != atr[:, :-1]
    for _ in range(3):
        edges[1:] |= edges[:-1].copy()
        edges[:-1] |= edges[1:].copy()
        edges[:, 1:] |= edges[:, :-1].copy()
        edges[:, :-1] |= edges[:, 1:].copy()
    interior &= ~edges
    expected = atr.copy()
    expected[90:110, 165:219] = L.NECK
    interior[86:94] = False  # the LIP face/neck edge
    np.testing.assert_array_equal(result.parse[interior], expected[interior])
    # The published flow: mask at 384x512 from that parse, then NEAREST up to 768x1024.
    small = agnostic_mask(result.parse, ARMS_DOWN, "hd", "upper_body")
    np.testing.assert_array_equal(
        np.asarray(result.mask), np.asarray(small.resize(SIZE, Image.Resampling.NEAREST))
    )
    big = np.asarray(result.mask) == 255
    assert big[2 * 130 : 2 * 250, 2 * 140 : 2 * 244].all()  # the shirt
    assert not big[2 * 55 : 2 * 85, 2 * 170 : 2 * 214].any()  # the face
    assert not big[2 * 265 : 2 * 415, 2 * 155 : 2 * 230].any()  # the trousers are kept
    assert not big[2 * 320 :, :].any()  # nothing below the arm bands


def test_no_garment_in_the_photo_is_the_typed_error(passthrough_parser: HumanParser) -> None:
    # Only background and hair: the photo is resampled (384x512 -> 768x1024 -> 384x512), and edge
    # colours blended between labels 0 and 2 can never read as a shirt (4) or dress (7).
    atr = np.zeros((512, 384), np.uint8)
    atr[15:120, 140:240] = L.HAIR
    lip = np.zeros_like(atr)
    with pytest.raises(NoGarmentRegionError):
        Preprocessor(lambda _: ARMS_DOWN, passthrough_parser)(encode_labels(atr, lip), size=(384, 512))


@pytest.fixture(scope="module")
def tiny_preprocessor(tiny_root: Path) -> Preprocessor:
    return Preprocessor.from_checkpoints(tiny_root, device="cpu")


def skeleton_keypoints() -> np.ndarray:
    """Where the tiny tree's pose network puts its fixed person in a 384x512 picture: grid cell c
    of the 1/8 output at pixel (8c + 4) * 512/184 - 0.5 (see tests/test_pose.py)."""
    return (8 * np.array(SKELETON_GRID, dtype=float) + 4) * (512 / 184) - 0.5


def test_tiny_tree_end_to_end(tiny_preprocessor: Preprocessor) -> None:
    """The tiny tree's networks on the house photo: the pose network reports its fixed person,
    the random parsers find upper clothes, and the mask is the published one of that parse."""
    person = load_rgb(Image.open(Path(__file__).parent.parent / "assets/models/0_astronaut.png"))
    result = tiny_preprocessor(person, "dc", "upper_body")
    np.testing.assert_allclose(result.keypoints, skeleton_keypoints(), atol=1.5)
    assert result.parse.shape == (512, 384) and result.parse.max() <= L.NECK
    assert (result.parse == L.UPPER_CLOTHES).any()
    expected = agnostic_mask(result.parse, result.keypoints, "dc", "upper_body")
    expected = expected.resize(SIZE, Image.Resampling.NEAREST)
    assert result.mask.size == SIZE
    np.testing.assert_array_equal(np.asarray(result.mask), np.asarray(expected))
    assert set(np.unique(np.asarray(result.mask))) == {0, 255}


def test_tiny_parser_with_given_keypoints(tiny_preprocessor: Preprocessor) -> None:
    """The parsing + mask half of the tiny tree, fed a known pose, on a noise photo: the random
    parsers find clothes for a dress but no pants, legs or skirt, so lower body is the typed error."""
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (1024, 768, 3), dtype=np.uint8))
    assert tiny_preprocessor.parser is not None
    preprocessor = Preprocessor(pose=lambda _: ARMS_DOWN, parser=tiny_preprocessor.parser)
    parse = tiny_preprocessor.parser(photo.resize((384, 512), Image.Resampling.BICUBIC))

    result = preprocessor(photo, "dc", "dresses")
    np.testing.assert_array_equal(result.keypoints, ARMS_DOWN)
    np.testing.assert_array_equal(result.parse, parse)
    expected = agnostic_mask(parse, ARMS_DOWN, "dc", "dresses").resize(SIZE, Image.Resampling.NEAREST)
    np.testing.assert_array_equal(np.asarray(result.mask), np.asarray(expected))
    assert (np.asarray(result.mask) == 255).any()

    assert not np.isin(parse, (L.PANTS, L.LEFT_LEG, L.RIGHT_LEG, L.SKIRT)).any()
    with pytest.raises(NoGarmentRegionError, match="no lower_body garment found"):
        preprocessor(photo, "dc", "lower_body")


def test_tiny_tree_user_mask_skips_the_networks(tiny_preprocessor: Preprocessor) -> None:
    result = tiny_preprocessor(Image.new("RGB", (300, 400)), mask=quadrant_mask())
    assert result.keypoints is None and result.parse is None
    np.testing.assert_array_equal(np.asarray(result.mask), expected_quadrants(SIZE))


PREVIEW_SIZES = (SIZE, (384, 512), (576, 768))


def check_previews_see_the_published_chain(parser: HumanParser) -> None:
    """Pose and parsing get photo -> 768x1024 -> 384x512 whatever size is diffused, so a preview
    gets the full-size mask, only scaled (never a mask from a resampled preview image).
    AssertionError where this fails."""
    photo = Image.fromarray(np.random.default_rng(2).integers(0, 256, (700, 500, 3), dtype=np.uint8))
    seen: list[np.ndarray] = []

    def pose(image: Image.Image) -> np.ndarray:
        seen.append(np.asarray(image).copy())
        return ARMS_DOWN

    preprocessor = Preprocessor(pose=pose, parser=parser)
    full, *previews = (preprocessor(photo, "hd", "upper_body", size=size) for size in PREVIEW_SIZES)
    published = photo.resize(SIZE, Image.Resampling.BICUBIC).resize((384, 512), Image.Resampling.BICUBIC)
    assert len(seen) == len(PREVIEW_SIZES)
    for image in seen:
        assert np.array_equal(image, np.asarray(published)), "pose saw another picture than the chain"
    small = agnostic_mask(full.parse, ARMS_DOWN, "hd", "upper_body")
    assert (np.asarray(small) == 255).any()
    for result, size in zip([full, *previews], PREVIEW_SIZES, strict=True):
        assert result.mask.size == size
        np.testing.assert_array_equal(result.parse, full.parse)
        np.testing.assert_array_equal(
            np.asarray(result.mask), np.asarray(small.resize(size, Image.Resampling.NEAREST))
        )


def test_preview_sizes_see_the_published_768x1024_chain(passthrough_parser: HumanParser) -> None:
    check_previews_see_the_published_chain(passthrough_parser)


def test_the_preview_check_fails_when_a_preview_is_parsed_from_its_own_pixels(
    passthrough_parser: HumanParser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutation: pose and parsing get the photo shrunk straight to 384x512 (one resize, not the
    published two), the shortcut the chain exists to avoid."""
    import preprocess.preprocessor

    def one_resize(image: Image.Image) -> Image.Image:
        return image.resize((384, 512), Image.Resampling.BICUBIC)

    monkeypatch.setattr(preprocess.preprocessor, "parse_input", one_resize)
    with pytest.raises(AssertionError, match="pose saw another picture than the chain"):
        check_previews_see_the_published_chain(passthrough_parser)

"""Fetching, decoding, fitting and encoding pictures (worker/images.py) against real servers."""

import base64
import io
import time
from dataclasses import replace

import pytest
from PIL import Image
from runpod.serverless.utils.rp_ssrf import is_safe_address
from worker_support import (
    ALLOW_PRIVATE_URLS,
    DEADLINE_SLACK,
    SilentServer,
    SlowHost,
    data_uri,
    image_bytes,
    png_claiming_size,
)

from core.framing import fit_to_frame
from worker.config import Settings
from worker.errors import InputError
from worker.images import (
    check_aspect,
    decode_base64,
    decode_image,
    encode_image,
    fetch_url,
    read_image,
)
from worker.schema import ImageRef

SETTINGS = Settings(download_connect_timeout=2.0, download_timeout=1.0, max_input_bytes=200_000)


def url_ref(url: str, field: str = "person") -> ImageRef:
    return ImageRef(field, "url", url)


def test_url_download_decodes_by_content_not_header(file_server, allow_loopback) -> None:
    png = image_bytes((60, 80))
    # The server claims JPEG under a .txt name: the content decides.
    url = file_server.add("/picture.txt", png, headers={"Content-Type": "image/jpeg"})
    image = read_image(url_ref(url), SETTINGS)
    assert image.format == "PNG" and image.size == (60, 80)


def test_redirects_are_followed_but_bounded(file_server, allow_loopback) -> None:
    png = image_bytes((32, 32))
    file_server.add("/final.png", png)
    first = file_server.redirect("/a", file_server.url("/final.png"))
    assert read_image(url_ref(first), SETTINGS).size == (32, 32)

    file_server.redirect("/loop", file_server.url("/loop"))
    with pytest.raises(InputError, match=r"person: the URL redirected more than 3 times"):
        fetch_url(url_ref(file_server.url("/loop")), SETTINGS)
    assert file_server.requests.count("/loop") == SETTINGS.download_max_redirects + 1


def test_http_error_status_names_field_and_status(file_server, allow_loopback) -> None:
    with pytest.raises(InputError, match=r"^garment: the URL on 127\.0\.0\.1 answered HTTP 404$"):
        fetch_url(url_ref(file_server.url("/missing.png?token=SECRET123"), "garment"), SETTINGS)


def test_url_path_and_query_never_appear_in_errors(file_server, allow_loopback) -> None:
    url = file_server.url("/private/path.png?X-Amz-Signature=SECRET123")
    with pytest.raises(InputError) as caught:
        fetch_url(url_ref(url), SETTINGS)
    assert "SECRET123" not in str(caught.value) and "/private" not in str(caught.value)


def test_download_byte_cap_with_and_without_content_length(file_server, allow_loopback) -> None:
    big = b"\0" * (SETTINGS.max_input_bytes + 1)
    with pytest.raises(InputError, match=r"larger than the 0\.2 MB limit"):
        fetch_url(url_ref(file_server.add("/declared", big)), SETTINGS)
    # Without a Content-Length (a close-delimited body) the cap applies while reading.
    file_server.add("/undeclared", big, headers={"Content-Length": ""})
    with pytest.raises(InputError, match=r"larger than the 0\.2 MB limit"):
        fetch_url(url_ref(file_server.url("/undeclared")), SETTINGS)
    small = image_bytes((16, 16))
    assert (
        fetch_url(url_ref(file_server.add("/small", small, headers={"Content-Length": ""})), SETTINGS)
        == small
    )


def test_silent_server_times_out_quickly(allow_loopback) -> None:
    with SilentServer() as silent:
        start = time.monotonic()
        with pytest.raises(InputError, match=r"^person: the download from 127\.0\.0\.1 timed out"):
            fetch_url(url_ref(silent.url()), replace(SETTINGS, download_timeout=0.5))
        assert time.monotonic() - start < 0.5 + DEADLINE_SLACK


@pytest.mark.parametrize(
    ("gap", "connect", "timeout"),
    [
        (0.25, 0.5, 0.5),  # every read gets a byte in time: only the whole-download limit stops it
        (2.0, 0.5, 0.3),  # a read that gets nothing in time (requests calls that a ConnectionError)
    ],
)
def test_slow_drip_is_cut_off_at_the_download_limit(
    allow_loopback, gap: float, connect: float, timeout: float
) -> None:
    settings = replace(SETTINGS, download_connect_timeout=connect, download_timeout=timeout)
    # The host hangs up after 10 s: a regression fails, not hangs.
    with SlowHost(10, headers={"Content-Length": "100000"}, gap=gap) as drip:
        start = time.monotonic()
        with pytest.raises(
            InputError,
            match=rf"^person: the download from 127\.0\.0\.1 timed out \(limit {timeout:g} s for the job's",
        ):
            fetch_url(url_ref(drip.url()), settings)
        # The deadline covers connecting too; the slack is for a loaded 2-core machine.
        assert time.monotonic() - start < timeout + DEADLINE_SLACK


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://[::1/p.png", "it cannot be parsed"),
        ("http://example.com:99999/g.png", "the port is not a number from 0 to 65535"),
        ("http://" + "a" * 70 + ".com/x", "the host name is not a valid domain name"),
        ("http://exa\x00mple.com/x", "the host name is not a valid domain name"),
        ("http:///x.png", "it has no host"),
    ],
)
def test_malformed_url_is_an_input_error(url: str, reason: str) -> None:
    with pytest.raises(InputError) as caught:
        fetch_url(url_ref(url, "garment"), SETTINGS)
    assert str(caught.value) == f"garment: not a valid URL ({reason})"


def test_redirect_to_a_malformed_url_is_an_input_error(file_server, allow_loopback) -> None:
    url = file_server.redirect("/bad", "http://[::1/secret-path.png")
    with pytest.raises(InputError) as caught:
        fetch_url(url_ref(url), SETTINGS)
    assert str(caught.value) == "person: not a valid URL (a redirect from 127.0.0.1 cannot be parsed)"


def test_private_address_refused_without_override(file_server, monkeypatch) -> None:
    monkeypatch.delenv(ALLOW_PRIVATE_URLS, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    url = file_server.add("/ok.png", image_bytes())
    with pytest.raises(InputError, match=r"private, loopback or link-local address"):
        fetch_url(url_ref(url), SETTINGS)
    with pytest.raises(InputError, match=r"private, loopback or link-local address"):
        fetch_url(url_ref(url.replace("127.0.0.1", "127.0.0.2")), SETTINGS)
    assert file_server.requests == []  # nothing was ever sent to the private address
    # Cloud metadata and private ranges are refused by the same classification; checked without
    # a request, so that a regression could never send traffic off this machine.
    for address in ("169.254.169.254", "10.0.0.1", "192.168.1.1", "172.16.0.1", "100.64.0.1", "::1"):
        assert not is_safe_address(address), address
    assert is_safe_address("93.184.216.34")


def test_every_redirect_hop_is_checked(file_server, monkeypatch) -> None:
    # The guard re-checks each hop: a redirect to a file:// URL is refused after an allowed first hop.
    monkeypatch.setenv(ALLOW_PRIVATE_URLS, "true")
    url = file_server.redirect("/to-file", "file:///etc/passwd")
    with pytest.raises(InputError, match=r"only http and https URLs are allowed"):
        fetch_url(url_ref(url), SETTINGS)


def test_base64_forms_decode_to_the_same_bytes() -> None:
    data = image_bytes((40, 40), "JPEG")
    plain = base64.b64encode(data).decode()
    forms = {
        "data_uri": data_uri(data, "image/jpeg"),
        "base64": plain,
        "unpadded": plain.rstrip("="),
        "wrapped": "\n".join(plain[i : i + 76] for i in range(0, len(plain), 76)),
        "urlsafe": base64.urlsafe_b64encode(data).decode(),
    }
    for name, text in forms.items():
        kind = "data_uri" if name == "data_uri" else "base64"
        assert decode_base64(ImageRef("garment", kind, text), 10**6) == data, name


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (ImageRef("garment", "base64", "not base64 at all!"), r"^garment: not valid base64"),
        (ImageRef("garment", "data_uri", "data:image/png,rawtext"), r"^garment: a data URI must be base64"),
        (
            ImageRef("mask", "base64", "A" * 400_000),
            r"^mask: the base64 data is larger than the 0\.2 MB limit",
        ),
        (ImageRef("mask", "base64", "A" * 280_000), r"^mask: the image is larger than the 0\.2 MB limit"),
    ],
)
def test_bad_base64_is_refused(ref: ImageRef, message: str) -> None:
    with pytest.raises(InputError, match=message):
        decode_base64(ref, SETTINGS.max_input_bytes)


def test_pixel_limit_is_checked_before_decoding() -> None:
    bomb = png_claiming_size(10_000, 10_000)  # 100 megapixels, 300 MB if decoded
    start = time.monotonic()
    with pytest.raises(
        InputError, match=r"^person: the image is 10000x10000 \(100\.0 megapixels\), over the limit"
    ):
        decode_image(bomb, "person", Settings().max_input_pixels)
    assert time.monotonic() - start < 1
    with pytest.raises(InputError, match=r"over the limit of 0\.001 megapixels"):
        decode_image(image_bytes((40, 40)), "person", 1_000)


def test_not_an_image_and_truncated_jpeg() -> None:
    with pytest.raises(InputError, match=r"^garment: the data is not an image in a supported format"):
        decode_image(b"%PDF-1.7 definitely not a picture", "garment", 10**6)
    jpeg = image_bytes((128, 128), "JPEG")
    with pytest.raises(InputError, match=r"^person: the JPEG data is truncated or corrupt$"):
        decode_image(jpeg[: len(jpeg) // 2], "person", 10**6)


@pytest.mark.parametrize(
    ("size", "fitted"),
    [
        ((512, 512), (768, 768)),
        ((300, 800), (384, 1024)),
        ((600, 800), (768, 1024)),
        ((96, 128), (768, 1024)),  # small photos are scaled up to the frame too
        ((8000, 1000), (768, 96)),  # 8:1, the widest fit "pad" takes
        ((1000, 8000), (128, 1024)),
    ],
)
def test_fit_into_the_model_frame_and_crop_back(size: tuple[int, int], fitted: tuple[int, int]) -> None:
    photo = Image.new("RGB", size, (10, 200, 30))
    padded, pad = fit_to_frame(photo, (768, 1024), (255, 255, 255))
    # Always the model's frame, whatever the photo's size: memory is bounded.
    assert padded.size == pad.canvas == (768, 1024)
    left, top, right, bottom = pad.box
    assert (right - left, bottom - top) == fitted
    assert padded.getpixel((left, top)) == (10, 200, 30)
    if fitted != (768, 1024):
        assert padded.getpixel((0, 0)) == (255, 255, 255)  # white padding
    # An output at any resolution from this frame, cropped back to the photo's region.
    for output_size in ((768, 1024), (192, 256)):
        cropped = pad.crop(padded.resize(output_size, Image.Resampling.NEAREST))
        assert abs(cropped.width / cropped.height - size[0] / size[1]) < 0.05 * max(size) / min(size)
        assert set(cropped.getdata()) == {(10, 200, 30)}  # no padding left in the result


def test_a_mask_fits_the_same_box_with_black_padding() -> None:
    mask = Image.new("L", (200, 100), 0)
    mask.paste(255, (0, 0, 100, 100))  # left half
    padded, pad = fit_to_frame(mask, (768, 1024), 0, Image.Resampling.NEAREST)
    assert pad.box == (0, 320, 768, 704)
    assert set(padded.getdata()) == {0, 255}  # still binary
    assert padded.getpixel((383, 320)) == 255 and padded.getpixel((384, 703)) == 0
    assert padded.getpixel((0, 319)) == 0  # padding: keep


@pytest.mark.parametrize("size", [(60000, 1), (1, 60000), (801, 100), (100, 801)])
def test_pad_refuses_a_photo_far_from_three_by_four(size: tuple[int, int]) -> None:
    with pytest.raises(InputError, match=rf"^person: the image is {size[0]}x{size[1]}, more than 8 times as"):
        check_aspect(size, "person", 8.0)
    check_aspect((800, 100), "person", 8.0)  # 8:1 itself is fine


@pytest.mark.parametrize(("fmt", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_encode_formats_round_trip(fmt: str, pil_format: str) -> None:
    image = Image.open(io.BytesIO(image_bytes((64, 96)))).convert("RGB")
    decoded = Image.open(io.BytesIO(encode_image(image, fmt)))
    assert decoded.format == pil_format and decoded.size == (64, 96)

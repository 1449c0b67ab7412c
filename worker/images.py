"""Getting a request's pictures in and the results out.

In: an http(s) URL (fetched through the runpod SDK's SSRF guard, `rp_ssrf.safe_get`, which
pins each connection to a validated public address and re-checks every redirect), a data URI
or plain base64. Bytes are capped before decoding, the pixel count is checked from the header
before any pixel is decoded (decompression bombs), and the format comes from the content, not
from a Content-Type or file name. Messages name the field and never echo a URL's path or query,
which often carry access tokens.

Out: PNG/JPEG/WebP encoding lives in the runpod-free `worker.encoding` and is re-exported here;
fitting a photo into the model's frame (fit "pad") lives in `core.framing`.
"""

import base64
import binascii
import contextlib
import io
import logging
import re
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import requests
from PIL import Image
from runpod.serverless.utils.rp_ssrf import SSRFError, iter_content_capped, safe_get
from urllib3.exceptions import ReadTimeoutError
from urllib3.util import Timeout

from worker.config import MB, Settings

# Re-exported: callers import the output side from here too.
from worker.encoding import CONTENT_TYPES as CONTENT_TYPES
from worker.encoding import EXTENSIONS as EXTENSIONS
from worker.encoding import encode_image as encode_image
from worker.errors import InputError
from worker.schema import ImageRef, url_host, url_problem

log = logging.getLogger(__name__)

# Formats Pillow may decode for a request (phone, web and scanner formats that this Pillow
# build reads); anything else, however Pillow could open it, is "not a supported image".
Image.init()
INPUT_FORMATS = tuple(
    name for name in ("JPEG", "PNG", "WEBP", "AVIF", "BMP", "GIF", "TIFF") if name in Image.OPEN
)
_DATA_URI = re.compile(r"^data:(?P<type>[^,;]*)(?P<params>(;[^,;]*)*?)(?P<b64>;base64)?,", re.IGNORECASE)
_CHUNK = 64 * 1024
# How long past its deadline a job waits for a download thread stuck outside urllib3's timeouts.
_DEADLINE_MARGIN = 1.0


class DownloadBudget:
    """One deadline shared by all of a job's downloads, and a way to call them all off.

    A job is billed while it waits: however many pictures it fetches, and however they fail
    (a host that never answers, one that drips a byte a second, a redirect chain of slow
    hops), its downloads together end by `expires`. `cancel()` stops the body reads still
    running, for when one picture has already failed the job.
    """

    def __init__(self, seconds: float, connect_timeout: float) -> None:
        self.seconds = seconds
        self.connect_timeout = connect_timeout
        self.expires = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._cancelled = False
        self._wakers: set[threading.Event] = set()

    def remaining(self) -> float:
        return max(0.0, self.expires - time.monotonic())

    def timeout(self) -> Timeout:
        """A urllib3 timeout that every request (each redirect hop too) re-reads from the deadline."""
        return _DeadlineTimeout(self)

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            wakers = list(self._wakers)
        for waker in wakers:
            waker.set()

    @contextlib.contextmanager
    def watch(self) -> Iterator[threading.Event]:
        """An event set when the downloads are called off (at once if they already were)."""
        waker = threading.Event()
        with self._lock:
            self._wakers.add(waker)
            if self._cancelled:
                waker.set()
        try:
            yield waker
        finally:
            with self._lock:
                self._wakers.discard(waker)


class _DeadlineTimeout(Timeout):
    """urllib3 clones a timeout for each request it sends: each clone gets what is left.

    `safe_get` takes one timeout for all redirect hops; a fixed number would give every hop
    the whole budget again. Connecting keeps its own, shorter limit.
    """

    def __init__(self, budget: DownloadBudget) -> None:
        super().__init__(connect=budget.connect_timeout, read=budget.seconds)
        self._budget = budget

    def clone(self) -> Timeout:
        # Never 0: a zero socket timeout means non-blocking, not "expired".
        left = max(self._budget.remaining(), 0.001)
        return Timeout(connect=min(self._budget.connect_timeout, left), read=left)


def read_image(ref: ImageRef, settings: Settings, budget: DownloadBudget | None = None) -> Image.Image:
    """Fetch or decode `ref` and return the decoded (not yet mode-converted) Pillow image."""
    if ref.kind == "url":
        data = fetch_url(ref, settings, budget)
    else:
        data = decode_base64(ref, settings.max_input_bytes)
    return decode_image(data, ref.field, settings.max_input_pixels)


def read_images(refs: Sequence[ImageRef], settings: Settings) -> list[Image.Image]:
    """Read several pictures at once: URLs concurrently, all under one `DownloadBudget`.

    The first failure (in the order of `refs`, among those that have failed by then) ends
    the wait and calls the other downloads off, so a job never waits for a picture it can
    no longer use. Threads that are still connecting when the job gives up end by the
    deadline on their own (their timeouts come from it).
    """
    budget = DownloadBudget(settings.download_timeout, settings.download_connect_timeout)
    if sum(ref.kind == "url" for ref in refs) < 2:
        return [read_image(ref, settings, budget) for ref in refs]
    pool = ThreadPoolExecutor(max_workers=len(refs), thread_name_prefix="fetch")
    futures = []
    try:
        futures += [pool.submit(read_image, ref, settings, budget) for ref in refs]
        # The fetches end by the deadline themselves; the margin only covers a stuck name
        # lookup (getaddrinfo cannot be interrupted) or a decode finishing just after it.
        wait(futures, timeout=budget.remaining() + _DEADLINE_MARGIN, return_when=FIRST_EXCEPTION)
        if budget.remaining() <= 0:
            # At the deadline they all stop together: name the first field, not the quickest thread.
            wait(futures, timeout=_DEADLINE_MARGIN)
        for future in futures:
            if future.done() and future.exception() is not None:
                raise future.exception()
        for ref, future in zip(refs, futures, strict=True):
            if not future.done():
                raise InputError(_timed_out(ref.field, url_host(ref.value) or "no host", budget.seconds))
        return [future.result() for future in futures]
    finally:
        budget.cancel()
        # Join the threads when they are done (so none outlives the job), never wait for one
        # that is still connecting: it ends by the deadline on its own.
        pool.shutdown(wait=all(future.done() for future in futures), cancel_futures=True)


def fetch_url(ref: ImageRef, settings: Settings, budget: DownloadBudget | None = None) -> bytes:
    """Download `ref.value` within `budget` (a fresh one when alone), capped, few redirects.

    The read timeout only bounds the wait for each piece of data, so a server that drips a
    byte every few seconds would hold the worker until RunPod's job timeout: a watchdog cuts
    the body off at the budget's deadline. Errors name the field, never the URL's path.
    """
    field = ref.field
    problem = url_problem(ref.value)
    if problem:
        raise InputError(f"{field}: not a valid URL ({problem})")
    host = url_host(ref.value) or "no host"
    if budget is None:
        budget = DownloadBudget(settings.download_timeout, settings.download_connect_timeout)
    try:
        response = safe_get(
            ref.value,
            timeout=budget.timeout(),
            max_bytes=settings.max_input_bytes,
            max_redirects=settings.download_max_redirects,
        )
        with response:
            if response.status_code != 200:
                raise InputError(f"{field}: the URL on {host} answered HTTP {response.status_code}")
            return _read_body(response, budget, settings.max_input_bytes)
    except SSRFError as error:
        raise InputError(f"{field}: {_ssrf_reason(str(error), host, settings)}") from None
    except requests.Timeout:
        raise InputError(_timed_out(field, host, budget.seconds)) from None
    except _Cancelled:
        raise InputError(f"{field}: the download from {host} was stopped (another picture failed)") from None
    except requests.exceptions.ChunkedEncodingError:
        # urllib3 checks the body against its Content-Length: the host hung up part-way.
        raise InputError(
            f"{field}: the host {host} closed the connection before the whole file arrived"
        ) from None
    except requests.ConnectionError:
        raise InputError(f"{field}: could not connect to {host}") from None
    except requests.RequestException as error:
        raise InputError(f"{field}: the download from {host} failed ({type(error).__name__})") from None
    except ValueError:
        # The URL itself was checked above, so this is a redirect's Location (never echoed).
        raise InputError(f"{field}: not a valid URL (a redirect from {host} cannot be parsed)") from None


def _timed_out(field: str, host: str, seconds: float) -> str:
    return f"{field}: the download from {host} timed out (limit {seconds:g} s for the job's downloads)"


class _Cancelled(Exception):
    """The job called its downloads off while this one was reading."""


def _read_body(response: requests.Response, budget: DownloadBudget, max_bytes: int) -> bytes:
    """Read the capped body, giving up at the deadline (or on cancel) even while a read is blocked.

    Raises `requests.Timeout` when the deadline passes (whatever the aborted read raised) or a
    read timed out, `_Cancelled` when the job called its downloads off.
    """
    if budget.remaining() <= 0:
        raise requests.Timeout()
    finished, fired = threading.Event(), threading.Event()

    with budget.watch() as called_off:

        def watchdog() -> None:
            called_off.wait(budget.remaining())
            if not finished.is_set():
                fired.set()
                _abort_response(response)

        guard = threading.Thread(target=watchdog, name="fetch-watchdog", daemon=True)
        guard.start()
        try:
            return b"".join(iter_content_capped(response, _CHUNK, max_bytes))
        except Exception as error:
            # requests reports a read timeout inside the body as a ConnectionError.
            read_timeout = isinstance(error, requests.ConnectionError) and any(
                isinstance(arg, ReadTimeoutError) for arg in error.args
            )
            if fired.is_set() and budget.remaining() > 0:
                raise _Cancelled() from None
            if fired.is_set() or read_timeout:
                raise requests.Timeout() from None
            raise
        finally:
            finished.set()
            called_off.set()  # wakes the watchdog, which then sees `finished` and leaves
            guard.join()


def _abort_response(response: requests.Response) -> None:
    """Stop a download from another thread.

    `response.close()` alone does not wake a thread blocked in `recv` (nor, measured, stop one
    that keeps receiving), so the socket is shut down first: that ends the blocked read at once.
    The socket is reached through urllib3's connection; if a future version hides it, closing
    still ends the download at the next byte or read timeout.
    """
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        response.close()


def _ssrf_reason(message: str, host: str, settings: Settings) -> str:
    """Turn an SSRFError (whose text holds the whole URL) into a sentence without the URL."""
    if "size cap" in message:
        return f"the file is larger than the {_megabytes(settings.max_input_bytes)} limit"
    if "non-public address" in message:
        return f"{host} is a private, loopback or link-local address, which the worker does not fetch"
    if "could not resolve" in message or "no addresses" in message:
        return f"could not resolve the host {host}"
    if "maximum redirects" in message:
        return f"the URL redirected more than {settings.download_max_redirects} times"
    if "blocked URL scheme" in message:
        return "only http and https URLs are allowed (also after redirects)"
    if "proxy" in message:
        return "the URL would go through a proxy, which the download guard refuses"
    return "the URL was refused by the download guard"


def decode_base64(ref: ImageRef, max_bytes: int) -> bytes:
    """Decode a data URI or plain base64 (standard or URL-safe alphabet, padding optional)."""
    text = ref.value
    if ref.kind == "data_uri":
        match = _DATA_URI.match(text)
        if not match or not match.group("b64"):
            raise InputError(f"{ref.field}: a data URI must be base64-encoded (data:image/png;base64,...)")
        text = text[match.end() :]
    # 4 characters carry 3 bytes: refuse an oversized string before decoding it (with 10% slack
    # for line breaks; the decoded size is checked exactly below).
    if len(text) > (max_bytes // 3 + 1) * 4 * 11 // 10 + 1024:
        raise InputError(f"{ref.field}: the base64 data is larger than the {_megabytes(max_bytes)} limit")
    text = "".join(text.split())
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{ref.field}: not valid base64 (nor an http(s) URL or a data URI)") from None
    if len(data) > max_bytes:
        raise InputError(f"{ref.field}: the image is larger than the {_megabytes(max_bytes)} limit")
    return data


def decode_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Decode image bytes by content, refusing too many pixels before decoding them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
    except Image.DecompressionBombError:
        raise InputError(f"{field}: the image has too many pixels (limit {max_pixels:,})") from None
    except (Image.UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InputError(
            f"{field}: the data is not an image in a supported format ({', '.join(INPUT_FORMATS)})"
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise InputError(
            f"{field}: the image is {width}x{height} ({width * height / 1e6:.1f} megapixels), "
            f"over the limit of {max_pixels / 1e6:g} megapixels"
        )
    if width < 1 or height < 1:
        raise InputError(f"{field}: the image is empty ({width}x{height})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise InputError(f"{field}: the {image.format} data is truncated or corrupt") from None
    return image


def check_aspect(size: tuple[int, int], field: str, max_ratio: float) -> None:
    """Refuse a photo too wide or too tall to pad: it would be a thin strip in the frame."""
    width, height = size
    if max(width / height, height / width) > max_ratio:
        shape = "wide as it is tall" if width > height else "tall as it is wide"
        raise InputError(
            f"{field}: the image is {width}x{height}, more than {max_ratio:g} times as {shape}, too far "
            "from the model's 3:4 frame to pad (crop it, or use fit 'stretch')"
        )


def _megabytes(size: int) -> str:
    return f"{size / MB:g} MB"

"""Getting a request's pictures in and the results out.

In: an http(s) URL (fetched through the runpod SDK's SSRF guard, `rp_ssrf.safe_get`, which
pins each connection to a validated public address and re-checks every redirect), a data URI
or plain base64. Bytes are capped before decoding, the pixel count is checked from the header
before any pixel is decoded (decompression bombs), and the format comes from the content, not
from a Content-Type or file name. All of a job's downloads share one deadline
(`DownloadBudget`), which stops them wherever they are reading, headers or body. Messages name
the field and never echo a URL's path or query, which often carry access tokens.

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
import sys
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
# How long past its deadline a job waits for a download thread stuck in a name lookup.
_DEADLINE_MARGIN = 1.0


class DownloadBudget:
    """One deadline shared by all of a job's downloads, enforced on their sockets.

    A job is billed while it waits: however many pictures it fetches, and however the hosts
    behave (one that never answers, one that drips its headers or its body a byte a second,
    one that stalls mid-body, a redirect chain of slow hops), its downloads together end by
    `expires`. Read timeouts cannot promise that (a drip feeds every read in time), so the
    budget holds every connection its downloads open (`connections`) and, at the
    deadline or on `cancel()`, shuts them down: that ends a read blocked in the headers or
    the body at once, whichever library holds the socket and however it holds it.

    Use it as a context manager: entering starts the deadline's timer, leaving stops it.
    """

    def __init__(self, seconds: float, connect_timeout: float) -> None:
        self.seconds = seconds
        self.connect_timeout = connect_timeout
        self.expires = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._stopped: str | None = None  # "deadline" or "cancelled" once the downloads are stopped
        self._sockets: set[socket.socket] = set()
        self._timer: threading.Timer | None = None

    def __enter__(self) -> "DownloadBudget":
        self._timer = threading.Timer(self.remaining(), self._stop, args=("deadline",))
        self._timer.name, self._timer.daemon = "fetch-deadline", True
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer.join()

    def remaining(self) -> float:
        return max(0.0, self.expires - time.monotonic())

    @property
    def stopped(self) -> str | None:
        """Why the downloads were stopped ("deadline" or "cancelled"), None while they may run."""
        return self._stopped

    def timeout(self) -> Timeout:
        """A urllib3 timeout that every request (each redirect hop too) re-reads from the deadline."""
        return _DeadlineTimeout(self)

    def cancel(self) -> None:
        """Stop the downloads still running: one picture has already failed the job."""
        self._stop("cancelled")

    def _stop(self, reason: str) -> None:
        with self._lock:
            if self._stopped is None:
                self._stopped = reason
            for sock in self._sockets:
                # A socket still connecting refuses the shutdown (not connected), but Linux keeps
                # it: the connection, once made, reads an end of file at once (a test pins this).
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    @contextlib.contextmanager
    def connections(self) -> Iterator[None]:
        """Hold every connection this thread opens inside the block (`_on_audit`); release them after."""
        held: list[socket.socket] = []
        _opening.target = (self, held)
        try:
            yield
        finally:
            _opening.target = None
            self._release(held)

    def _hold(self, sock: socket.socket) -> socket.socket:
        """Keep a handle on a connection a download is opening, or refuse it once stopped.

        The handle is a duplicate: TLS wraps the connection in a new socket object and detaches
        the original, but a shutdown acts on the connection, whichever descriptor names it. The
        duplicate keeps the connection open until the download releases it, at its end.
        """
        with self._lock:
            if self._stopped is not None:
                raise ConnectionAbortedError("the job's downloads were stopped")
            held = sock.dup()
            self._sockets.add(held)
            return held

    def _release(self, held: list[socket.socket]) -> None:
        # Under the lock: a shutdown must never reach a descriptor number closed and reused meanwhile.
        with self._lock:
            for sock in held:
                self._sockets.discard(sock)
                sock.close()


# The budget and handle list of the download running in each thread (see `_on_audit`).
_opening = threading.local()


def _on_audit(event: str, args: tuple) -> None:
    """Hand each connection a download opens to its budget (a `sys.addaudithook` hook).

    Python raises the audit event "socket.connect" in the thread that connects, for every
    connection of every library: requests and urllib3 connect in the thread that calls them,
    for each redirect hop and each address `safe_get` tries, before any TLS wrapping. There
    a download's sockets are reachable however urllib3 hands them on afterwards: a response
    that closes its connection (HTTP/1.0, `Connection: close`, a body read until the host
    hangs up) takes the socket out of urllib3's connection object, where nothing can reach it.
    The hook runs for every audited event of the process (a few hundred per job), so it
    returns at once for all but this one.
    """
    if event == "socket.connect":
        target = getattr(_opening, "target", None)
        if target is not None:
            budget, held = target
            held.append(budget._hold(args[0]))


sys.addaudithook(_on_audit)


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


def read_images(refs: Sequence[ImageRef], settings: Settings, *, each: bool = False) -> list:
    """Read several pictures at once: URLs concurrently, all under one `DownloadBudget`.

    The first failure (in the order of `refs`, among those that have failed by then) ends
    the wait and calls the other downloads off, so a job never waits for a picture it can
    no longer use. With `each`, a picture that cannot be read is returned as its `InputError`
    and the others are still waited for, within the same deadline (a catalog serves the people
    whose photos came).
    """
    with DownloadBudget(settings.download_timeout, settings.download_connect_timeout) as budget:
        if sum(ref.kind == "url" for ref in refs) < 2:
            return [_read(ref, settings, budget, each) for ref in refs]
        return _read_concurrently(refs, settings, budget, each)


def _read(ref: ImageRef, settings: Settings, budget: DownloadBudget, each: bool) -> Image.Image | InputError:
    try:
        return read_image(ref, settings, budget)
    except InputError as error:
        if not each:
            raise
        return error


def _read_concurrently(
    refs: Sequence[ImageRef], settings: Settings, budget: DownloadBudget, each: bool
) -> list[Image.Image | InputError]:
    pool = ThreadPoolExecutor(max_workers=len(refs), thread_name_prefix="fetch")
    futures = []
    try:
        futures += [pool.submit(_read, ref, settings, budget, each) for ref in refs]
        # The fetches end by the deadline themselves; the margin only covers a stuck name
        # lookup (getaddrinfo cannot be interrupted) or a decode finishing just after it.
        wait(futures, timeout=budget.remaining() + _DEADLINE_MARGIN, return_when=FIRST_EXCEPTION)
        if budget.remaining() <= 0:
            # At the deadline they all stop together: name the first field, not the quickest thread.
            wait(futures, timeout=_DEADLINE_MARGIN)
        for future in futures:
            if future.done() and future.exception() is not None:
                raise future.exception()
        results = []
        for ref, future in zip(refs, futures, strict=True):
            if future.done():
                results.append(future.result())
                continue
            late = InputError(_timed_out(ref.field, url_host(ref.value) or "no host", budget.seconds))
            if not each:
                raise late
            results.append(late)
        return results
    finally:
        budget.cancel()
        # Stopped downloads end at once, and their threads are joined so that none outlives the
        # job; only one in a name lookup (getaddrinfo cannot be interrupted) is left to end on
        # its own: its connection is refused once it has an address.
        wait(futures, timeout=_DEADLINE_MARGIN)
        pool.shutdown(wait=all(future.done() for future in futures), cancel_futures=True)


class _Stopped(Exception):
    """The download was stopped (deadline or cancel) however its read ended."""


def fetch_url(ref: ImageRef, settings: Settings, budget: DownloadBudget | None = None) -> bytes:
    """Download `ref.value` within `budget` (a fresh one when alone), capped, few redirects.

    The budget's deadline (or its cancel) stops the download wherever it is; errors name the
    field, never the URL's path.
    """
    if budget is None:
        with DownloadBudget(settings.download_timeout, settings.download_connect_timeout) as own:
            return fetch_url(ref, settings, own)
    field = ref.field
    problem = url_problem(ref.value)
    if problem:
        raise InputError(f"{field}: not a valid URL ({problem})")
    host = url_host(ref.value) or "no host"
    try:
        with budget.connections():
            response = safe_get(
                ref.value,
                timeout=budget.timeout(),
                max_bytes=settings.max_input_bytes,
                max_redirects=settings.download_max_redirects,
            )
            with response:
                if response.status_code != 200:
                    raise InputError(f"{field}: the URL on {host} answered HTTP {response.status_code}")
                data = b"".join(iter_content_capped(response, _CHUNK, settings.max_input_bytes))
        if budget.stopped is not None:
            # A stopped read may end without an error: a body (or headers) read until the host
            # closes ends at the shutdown as if the host had closed. What arrived is not the file.
            raise _Stopped()
        return data
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"{field}: {_download_failure(error, budget, host, settings)}") from None


def _download_failure(error: Exception, budget: DownloadBudget, host: str, settings: Settings) -> str:
    """The sentence (after the field) for a failed download; whatever a stopped read raised, the
    reason is the stop. Never the URL: its path and query often carry access tokens."""
    if budget.stopped == "cancelled":
        return f"the download from {host} was stopped (another picture failed)"
    # requests reports a read timeout inside the body as a ConnectionError.
    read_timeout = isinstance(error, requests.ConnectionError) and any(
        isinstance(arg, ReadTimeoutError) for arg in error.args
    )
    if budget.stopped == "deadline" or read_timeout or isinstance(error, requests.Timeout):
        return _timed_out_reason(host, budget.seconds)
    if isinstance(error, SSRFError):
        return _ssrf_reason(str(error), host, settings)
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        # urllib3 checks the body against its Content-Length: the host hung up part-way.
        return f"the host {host} closed the connection before the whole file arrived"
    if isinstance(error, requests.ConnectionError):
        return f"could not connect to {host}"
    if isinstance(error, requests.RequestException):
        return f"the download from {host} failed ({type(error).__name__})"
    if isinstance(error, ValueError):
        # The URL itself was checked before, so this is a redirect's Location (never echoed).
        return f"not a valid URL (a redirect from {host} cannot be parsed)"
    raise error


def _timed_out_reason(host: str, seconds: float) -> str:
    return f"the download from {host} timed out (limit {seconds:g} s for the job's downloads)"


def _timed_out(field: str, host: str, seconds: float) -> str:
    return f"{field}: {_timed_out_reason(host, seconds)}"


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

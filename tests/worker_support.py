"""Real servers and real image bytes for the worker tests (no mocks).

`LoopbackHTTPServer` is the one way the tests run an HTTP server of their own (127.0.0.1, a free
port, a daemon thread); `FileServer` is one serving registered bodies, statuses and redirects;
`running_server` starts a server process of the worker's (`api_worker`: the SDK's local API
server) and stops it, on the environment `worker_env` gives;
`SilentServer` accepts TCP connections and never answers (a download that times out);
`SlowHost` answers as slowly as a test asks (headers or body a byte at a time, stalls, chunks,
https) and hangs up after a while; `BrokenBodyServer` sends part of a body and hangs up. The
image helpers make real encoded files, including a PNG whose header claims 100 megapixels.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

from PIL import Image

REPO = Path(__file__).resolve().parent.parent

ALLOW_PRIVATE_URLS = "RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS"
"""The runpod SDK's switch that lets downloads reach private addresses: the tests' hosts are loopback."""
DEADLINE_SLACK = 2.0
"""Seconds a download deadline may be overrun in the suite (issue 10: "within the deadline plus a
second or two"), generous for a loaded 2-core CI machine."""


class HandClock:
    """A monotonic clock that moves only when a test moves it (`clock.now += seconds`): for
    deadlines and retention periods that are minutes long in real time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps the test output clean (no line per request on stderr)."""

    def log_message(self, *args) -> None:
        pass


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server on a free 127.0.0.1 port that serves from a daemon thread.

    `start()` (or `with`) serves, `close()` stops serving and frees the port; closing one that
    never started only frees the port (`shutdown()` would wait forever for a loop that never ran).
    """

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread = None
        self.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class FileServer:
    """Serve `routes[path] = (status, body, headers)` on 127.0.0.1; records each requested path."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self.requests: list[str] = []
        self.gates: dict[str, tuple[threading.Event, threading.Event]] = {}
        server = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                if self.path in server.gates:
                    arrived, release = server.gates[self.path]
                    arrived.set()
                    release.wait(300)
                status, body, headers = server.routes.get(self.path, (404, b"not found", {}))
                self.send_response(status)
                for name, value in headers.items():
                    if value:  # an empty value leaves the header out
                        self.send_header(name, value)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = LoopbackHTTPServer(Handler)

    def __enter__(self) -> FileServer:
        self.httpd.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.close()

    def url(self, path: str) -> str:
        return f"{self.httpd.base_url}{path}"

    def add(self, path: str, body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> str:
        self.routes[path] = (status, body, headers or {"Content-Type": "application/octet-stream"})
        return self.url(path)

    def hold(self, path: str, body: bytes) -> tuple[str, threading.Event, threading.Event]:
        """Serve `body` only once `release` is set; `arrived` is set when the request comes in."""
        arrived, release = threading.Event(), threading.Event()
        self.gates[path] = (arrived, release)
        return self.add(path, body), arrived, release

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        self.routes[path] = (status, b"", {"Location": location})
        return self.url(path)


class _RawLoopbackServer:
    """A bare TCP listener on 127.0.0.1 that hands each accepted connection to `_serve`."""

    backlog = 16

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(self.backlog)
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()

    def url(self, path: str = "/image.png") -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}{path}"


class SilentServer(_RawLoopbackServer):
    """Accepts connections on 127.0.0.1 and never sends a byte."""

    def __init__(self) -> None:
        super().__init__()
        self.accepted: list[socket.socket] = []

    def _serve(self, conn: socket.socket) -> None:
        self.accepted.append(conn)

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        for conn in self.accepted:
            conn.close()


class SlowHost(_RawLoopbackServer):
    """An image host as slow as a test needs, which hangs up `lifetime` seconds after each request.

    It answers `status` and `headers` (at once, or a byte every `head_gap` seconds), then `burst`
    at once, then `piece` every `gap` seconds (never, when `gap` is None: a stall); each body write
    is a chunk of its own when `chunked`. A drip feeds every read long before its timeout, so only
    a limit on the whole download stops it (a slowloris in reverse). `tls` (a server-side
    `ssl.SSLContext`) serves https. Hanging up after `lifetime` bounds what a worker that waits for
    the host instead of its own deadline costs a test: seconds, never a hung suite. `hung_up` is set
    once the client has closed the connection.
    """

    def __init__(
        self,
        lifetime: float,
        *,
        status: str = "HTTP/1.1 200 OK",
        headers: dict[str, str] | None = None,
        head_gap: float | None = None,
        burst: bytes = b"",
        piece: bytes = b"x",
        gap: float | None = None,
        chunked: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__()
        self.lifetime, self.head_gap, self.gap, self.chunked, self.tls = lifetime, head_gap, gap, chunked, tls
        lines = [status, *(f"{name}: {value}" for name, value in (headers or {}).items())]
        self.head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.burst, self.piece = burst, piece
        self.hung_up = threading.Event()
        self.stop = threading.Event()

    def url(self, path: str = "/image.jpg") -> str:
        return super().url(path).replace("http:", "https:" if self.tls else "http:")

    def _serve(self, conn: socket.socket) -> None:
        threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _writes(self) -> Iterator[tuple[float, bytes]]:
        """(seconds to wait, bytes to send next), in order; endless when the host drips."""
        if self.head_gap is None:
            yield 0.0, self.head
        else:
            yield from ((self.head_gap, self.head[i : i + 1]) for i in range(len(self.head)))
        if self.burst:
            yield 0.0, self._framed(self.burst)
        while self.gap is not None:
            yield self.gap, self._framed(self.piece)

    def _framed(self, data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data

    def _answer(self, conn: socket.socket) -> None:
        ends = time.monotonic() + self.lifetime
        try:
            conn.settimeout(5)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            conn.recv(65536)
            for delay, data in self._writes():
                if not self._idle(conn, delay, ends):
                    return
                conn.sendall(data)
            self._idle(conn, self.lifetime, ends)
        except OSError:  # the client hung up mid-write (or mid-handshake)
            self.hung_up.set()
        finally:
            conn.close()

    def _idle(self, conn: socket.socket, seconds: float, ends: float) -> bool:
        """Wait `seconds`; False (time to hang up) once the client has closed the connection,
        the host is stopped or its lifetime is over."""
        until = min(time.monotonic() + seconds, ends)
        while not self.stop.is_set():
            readable, _, _ = select.select([conn], [], [], max(0.0, min(until - time.monotonic(), 0.05)))
            if readable and not conn.recv(1):  # an end of file: the client closed the connection
                self.hung_up.set()
                return False
            if time.monotonic() >= until:
                return time.monotonic() < ends
        return False

    def __exit__(self, *exc) -> None:
        self.stop.set()
        super().__exit__(*exc)


def fetch_threads() -> list[str]:
    """The worker's download threads still alive (the pool's `fetch_N`, the deadline's timer)."""
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("fetch")]


def tls_for_loopback(folder: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context for https on 127.0.0.1 and the path of the certificate to trust for it.

    The certificate is self-signed for the address 127.0.0.1, made with `cryptography` (which the
    runpod SDK depends on); a client trusts it through REQUESTS_CA_BUNDLE, as requests reads it.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "loopback.pem", folder / "loopback.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path


class BrokenBodyServer(_RawLoopbackServer):
    """Answers 200 with `Content-Length: length`, sends `sent` bytes of it, then ends the connection.

    `reset=True` aborts it (an RST, as a crashed host or a dropped proxy does); otherwise it is
    closed normally (a FIN), so the body is simply shorter than its Content-Length said.
    """

    def __init__(self, length: int = 50_000, sent: int = 10_000, reset: bool = False) -> None:
        super().__init__()
        self.length, self.sent, self.reset = length, sent, reset

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                head = f"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {self.length}\r\n\r\n"
                conn.sendall(head.encode() + b"\x89PNG" + b"x" * (self.sent - 4))
                if self.reset:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                return


class DelayingProxy(_RawLoopbackServer):
    """A TCP proxy on 127.0.0.1 in front of `upstream` (host, port) that can slow a server down.

    `answer_delay` holds back each connection's first answer bytes (a server slow to reply);
    `upload_rate` caps the bytes per second sent upstream (a slow link, so that a test can act
    in the middle of an upload). `forwarded` counts the request bytes sent upstream, and
    `upload_started` is set once `started_after` of them have gone through.
    """

    backlog = 32

    def __init__(
        self,
        upstream: tuple[str, int],
        answer_delay: float = 0.0,
        upload_rate: float | None = None,
        started_after: int = 65536,
    ) -> None:
        self.upstream, self.answer_delay, self.upload_rate = upstream, answer_delay, upload_rate
        self.started_after = started_after
        self.forwarded = 0
        self.upload_started = threading.Event()
        self.closing = threading.Event()
        super().__init__()

    @property
    def endpoint_url(self) -> str:
        return self.url("")

    def _serve(self, conn: socket.socket) -> None:
        threading.Thread(target=self._connect, args=(conn,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()  # upstream is down: the client sees the connection drop
            return
        server.settimeout(None)
        threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
        self._pipe(server, client, False)

    def _pipe(self, source: socket.socket, target: socket.socket, upload: bool) -> None:
        first = True
        try:
            while not self.closing.is_set():
                # Small reads when pacing, so that the rate holds over short spans too.
                chunk = source.recv(4096 if upload and self.upload_rate else 65536)
                if not chunk:
                    break
                if upload:
                    if self.upload_rate:
                        time.sleep(len(chunk) / self.upload_rate)
                    self.forwarded += len(chunk)
                    if self.forwarded >= self.started_after:
                        self.upload_started.set()
                elif first and self.answer_delay and self.closing.wait(self.answer_delay):
                    break
                first = False
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def __exit__(self, *exc) -> None:
        self.closing.set()
        super().__exit__(*exc)


def worker_env(checkpoints: Path, **extra: str) -> dict[str, str]:
    """The environment of a worker process on test weights, `extra` on top.

    This machine's environment less what would point the worker at a real bucket or platform
    or change its logging; CPU allowed (no CUDA here: the worker would refuse to start), the
    small 256x192 size and loopback URLs (the tests' file servers) allowed.
    """
    inherited = ("BUCKET_", "RUNPOD_WEBHOOK", "RUNPOD_LOG", "RUNPOD_DEBUG", "ALLOW_CPU", "WARMUP")
    env = {name: value for name, value in os.environ.items() if not name.startswith(inherited)}
    env.update(
        CHECKPOINTS_DIR=str(checkpoints),
        ALLOW_CPU="true",
        EXTRA_RESOLUTIONS="256x192",
        PYTHONUNBUFFERED="1",
    )
    env[ALLOW_PRIVATE_URLS] = "true"
    env.update(extra)
    return env


@contextlib.contextmanager
def handler_env(checkpoints: Path, **extra: str) -> Iterator[None]:
    """This process's environment for jobs run through `handler.handler` on test weights: the
    small 256x192 size and loopback URLs allowed, no bucket, no platform (progress only logged),
    `extra` on top; restored on exit."""
    import pytest

    with pytest.MonkeyPatch.context() as patch:
        for name in os.environ:
            if name.startswith(("BUCKET_", "RUNPOD_WEBHOOK")):
                patch.delenv(name)
        for name, value in {"CHECKPOINTS_DIR": str(checkpoints), "EXTRA_RESOLUTIONS": "256x192",
                            ALLOW_PRIVATE_URLS: "true", **extra}.items():  # fmt: skip
            patch.setenv(name, value)
        yield


def served_worker_env(checkpoints: Path, **extra: str) -> dict[str, str]:
    """`worker_env` for a worker serving HTTP: no warm-up job before the first request (the
    `--test_input` run covers the warm-up; here it would only delay the start), uvicorn quiet."""
    return worker_env(checkpoints, **{"WARMUP": "false", "UVICORN_LOG_LEVEL": "warning", **extra})


def json_request(
    method: str, url: str, body: object = None, headers: dict[str, str] | None = None, timeout: float = 300
) -> tuple[int, dict]:
    """One JSON request as a RunPod client sends it; (status, JSON answer), error statuses too."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def stop_process(process: subprocess.Popen, how: signal.Signals = signal.SIGTERM, grace: float = 20) -> None:
    """Send `how` to a process still running and wait for it; kill it after `grace` seconds."""
    if process.poll() is None:
        process.send_signal(how)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def running_server(
    command: list[str],
    env: dict[str, str],
    log_path: Path,
    ready_url: str,
    ready_headers: dict[str, str] | None = None,
    stop: signal.Signals = signal.SIGINT,
    start_timeout: float = 300,
    ready_status: int | None = None,
) -> Iterator[subprocess.Popen]:
    """Run `command` in the repository (output to `log_path`) until the `with` block ends.

    It is ready once a GET of `ready_url` answers with success (with `ready_status` exactly,
    when given: a load-balancing worker answers /ping with 204 while it starts), which on the
    tiny weights takes the models' loading; a process that exits first fails with its log's
    tail. Afterwards it gets `stop` (the SDK's API server leaves on SIGINT, `worker.serve` on
    SIGTERM), then a kill.
    """
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + start_timeout
        probe = urllib.request.Request(ready_url, headers=ready_headers or {})
        while True:
            if process.poll() is not None:
                log_tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{' '.join(command[1:])} exited while starting:\n{log_tail}")
            try:
                with urllib.request.urlopen(probe, timeout=2) as answer:
                    if ready_status in (None, answer.status):
                        break
            except OSError:  # not listening yet, or an error status
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"{ready_url} did not answer {ready_status} within {start_timeout} s")
            time.sleep(0.3)
        yield process
    finally:
        stop_process(process, stop)


@dataclass
class ApiWorker:
    """`python handler.py --rp_serve_api` running on a loopback port."""

    process: subprocess.Popen
    base_url: str
    log_path: Path

    def post(self, route: str, body: object, timeout: float = 300) -> tuple[int, dict]:
        return json_request("POST", f"{self.base_url}{route}", body, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def api_worker(env: dict[str, str], log_path: Path, start_timeout: float = 300) -> Iterator[ApiWorker]:
    """The worker's API server (the SDK's `--rp_serve_api`) on a free loopback port, up and loaded."""
    port = free_port()
    command = [sys.executable, "handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1",
               "--rp_api_port", str(port)]  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    ready_url = f"{base_url}/openapi.json"
    with running_server(command, env, log_path, ready_url, start_timeout=start_timeout) as process:
        yield ApiWorker(process, base_url, log_path)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def image_bytes(
    size: tuple[int, int] = (96, 128), fmt: str = "PNG", mode: str = "RGB", seed: int = 0
) -> bytes:
    """A real encoded picture with some structure (a gradient plus a block), not a flat colour."""
    width, height = size
    image = Image.linear_gradient("L").resize(size).convert(mode if mode != "CMYK" else "RGB")
    image.paste(
        (200, 30, 30) if image.mode == "RGB" else 200, (width // 4, height // 4, width // 2, height // 2)
    )
    if seed:
        image = image.rotate(seed * 17)
    if mode == "CMYK":
        image = image.convert("CMYK")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def data_uri(data: bytes, content_type: str = "image/png") -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


def png_claiming_size(width: int, height: int) -> bytes:
    """A PNG whose header says `width` x `height` (8-bit RGB) with almost no pixel data.

    Decoding it would need width*height*3 bytes of memory; a safe decoder refuses it from the
    header alone. Building it costs nothing.
    """

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )

"""Loopback servers for the local endpoint's tests: a job-holding image host and a webhook receiver."""

from __future__ import annotations

import json
import threading

from worker_support import LoopbackHTTPServer, QuietHandler


class GateServer:
    """Answers GET with 404, but only once `open()` is called: a job fetching from it stays
    IN_PROGRESS (in its fetch stage) for as long as a test needs, then fails at once."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.arrived = threading.Semaphore(0)
        gate, arrived = self.gate, self.arrived

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                arrived.release()
                gate.wait(60)
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = LoopbackHTTPServer(Handler).start()

    def url(self) -> str:
        return f"{self.httpd.base_url}/person.png"

    def wait_for_request(self, timeout: float = 60) -> None:
        assert self.arrived.acquire(timeout=timeout), "the held job never started fetching"

    def close(self) -> None:
        self.gate.set()
        self.httpd.close()


class WebhookReceiver:
    """Records the JSON bodies POSTed to it (RunPod's webhook call) and answers `status`."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict] = []
        self.received = threading.Event()
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                receiver.received.set()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = LoopbackHTTPServer(Handler).start()

    def url(self) -> str:
        return f"{self.httpd.base_url}/hook?token=abc"

    def close(self) -> None:
        self.httpd.close()

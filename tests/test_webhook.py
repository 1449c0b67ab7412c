"""Webhook delivery of the local endpoint: the download rules apply, retries, nothing echoed."""

from __future__ import annotations

import logging

import pytest
from serve_support import WebhookReceiver
from worker_support import ALLOW_PRIVATE_URLS

from worker.webhook import deliver, webhook_problem


@pytest.fixture
def receiver():
    server = WebhookReceiver()
    yield server
    server.close()


def test_a_loopback_webhook_is_refused_without_the_escape_hatch(
    receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(ALLOW_PRIVATE_URLS, raising=False)
    with caplog.at_level(logging.WARNING, logger="worker.webhook"):
        assert deliver(receiver.url(), {"id": "j"}, pause=0) is False
    assert receiver.bodies == []
    assert "not a public address" in caplog.text and "token=abc" not in caplog.text


def test_delivered_with_the_escape_hatch_and_retried_on_an_error_status(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(ALLOW_PRIVATE_URLS, "true")
    ok = WebhookReceiver()
    failing = WebhookReceiver(status=500)
    try:
        assert deliver(ok.url(), {"id": "j", "status": "COMPLETED"}, pause=0) is True
        assert ok.bodies == [{"id": "j", "status": "COMPLETED"}]
        assert deliver(failing.url(), {"id": "k"}, attempts=3, pause=0) is False
        assert failing.bodies == [{"id": "k"}] * 3
    finally:
        ok.close()
        failing.close()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (42, "it must be a string"),
        ("ftp://example.com/hook", "it must be an http(s) URL"),
        ("https://", "it has no host"),
        ("https://example.com:99999/x", "the port is not a number from 0 to 65535"),
        ("https://example.com/hook?token=1", None),
    ],
)
def test_webhook_problem(url: object, problem: str | None) -> None:
    assert webhook_problem(url) == problem

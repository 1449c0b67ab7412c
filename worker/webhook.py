"""POST a finished job to the `webhook` its request named, as RunPod does, within the download rules.

A webhook is a URL chosen by whoever sends the job, so the server must not become a way to
reach its own network: the address is checked with the runpod SDK's SSRF guard (the one the
worker's image downloads go through), the connection is pinned to the address that was
checked, redirects are not followed, and no proxy is used. The SDK's
`RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS=true` lifts the address check for local testing, exactly
as it does for downloads. Logs name the host only: a webhook's path or query may hold a token.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit

import requests
from runpod.serverless.utils.rp_ssrf import PinnedIPAdapter, SSRFError, resolve_and_validate

from worker.schema import url_host, url_problem

log = logging.getLogger(__name__)

# RunPod tries a webhook up to 3 times, 10 s apart.
ATTEMPTS = 3
PAUSE_SECONDS = 10.0
TIMEOUT_SECONDS = 10.0


def webhook_problem(url: object) -> str | None:
    """Why `url` cannot be a webhook (None when it can be tried), without echoing it."""
    if not isinstance(url, str):
        return "it must be a string"
    if urlsplit(url).scheme not in ("http", "https"):
        return "it must be an http(s) URL"
    return url_problem(url)


def deliver(url: str, payload: dict, *, attempts: int = ATTEMPTS, pause: float = PAUSE_SECONDS) -> bool:
    """POST `payload` as JSON to `url`; True once it answers 2xx. A refused address is not retried."""
    host = url_host(url) or "no host"
    for attempt in range(1, attempts + 1):
        try:
            status = _post(url, payload)
        except (SSRFError, ValueError):  # ValueError: a host name that cannot be encoded
            log.warning("webhook to %s refused: not a public address (the download rules apply)", host)
            return False
        except requests.RequestException as error:
            log.warning("webhook to %s failed (try %d/%d): %s", host, attempt, attempts, type(error).__name__)
        else:
            if 200 <= status < 300:
                return True
            log.warning("webhook to %s answered HTTP %d (try %d/%d)", host, status, attempt, attempts)
        if attempt < attempts:
            time.sleep(pause)
    return False


def _post(url: str, payload: dict) -> int:
    problem = webhook_problem(url)
    if problem:
        raise ValueError(problem)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = resolve_and_validate(parts.hostname, port)[0]
    with requests.Session() as session:
        session.trust_env = False  # a proxy would resolve the name again, past the check
        adapter = PinnedIPAdapter(address)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        response = session.post(url, json=payload, timeout=TIMEOUT_SECONDS, allow_redirects=False)
        return response.status_code

"""The playground page in a real browser: Debian's headless Chromium driven by Playwright.

Each endpoint form gets its own worker on the tiny checkpoints: the local queue endpoint
(`python -m worker.serve`, with an API key) and the load-balancing one (`--lb`, without). The
tests use the page as a person would, through the controls the page's contract names (every
input control's `name` is its API field, one submit button, results as <img> inside #results,
errors in the role="alert" element), and fail on any console error they did not cause on
purpose: a refused request still shows up in Chromium's console as a failed resource, so those
are matched exactly against the refusals the test asked for.

`UPDATE_SCREENSHOT=1 .venv/bin/python -m pytest tests/test_playground.py -k with_progress` rewrites the
README's screenshot (docs/playground.png) from the queue test's finished page.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageOps
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
from worker_support import REPO, free_port, json_request, running_server, served_worker_env

API_KEY = "page-key-8d2f61ac"
GARMENT = REPO / "assets" / "garments" / "0_tshirt.png"
HOUSE_MODEL = REPO / "assets" / "models" / "0_astronaut.png"
SCREENSHOT = REPO / "docs" / "playground.png"
JOB_TIMEOUT_MS = 300_000
# Chromium's console line for a response with an error status (not a script error).
REFUSED = re.compile(r"^Failed to load resource: the server responded with a status of (\d{3})\b")


def chromium() -> str:
    """The system's Chromium (Debian's package, installed by scripts/setup-dev.sh)."""
    found = os.environ.get("CHROMIUM") or shutil.which("chromium")
    assert found, "Chromium is not installed: run scripts/setup-dev.sh (it installs Debian's chromium)"
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), headless=True)
        yield browser
        browser.close()


class Console:
    """Everything the page logged as an error, and its uncaught exceptions."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._message)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def _message(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def check(self, refused: list[int] = ()) -> None:
        """No error but the failed-resource lines of the refusals the test caused, in order."""
        statuses = [int(match.group(1)) for text in self.errors if (match := REFUSED.match(text))]
        others = [text for text in self.errors if not REFUSED.match(text)]
        assert others == [] and statuses == list(refused), self.errors


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    yield page
    context.close()


def start_worker(tiny_root: Path, log_path: Path, lb: bool, **env: str):
    port = free_port()
    command = [sys.executable, "-m", "worker.serve", "--port", str(port)] + (["--lb"] if lb else [])
    ready = f"http://127.0.0.1:{port}/ping" if lb else f"http://127.0.0.1:{port}/playground/config"
    environment = served_worker_env(tiny_root, PROGRESS_EVERY="1", **env)
    return port, running_server(command, environment, log_path, ready, stop=signal.SIGTERM, ready_status=200)


@pytest.fixture(scope="module")
def queue_worker(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port, server = start_worker(tiny_root, tmp_path_factory.mktemp("page") / "queue.log", False,
                                LOCAL_API_KEY=API_KEY)  # fmt: skip
    with server:
        yield f"http://127.0.0.1:{port}"


def mirrored(source: Path, target: Path, tint: tuple[int, int, int] | None = None) -> Path:
    """Another picture from an asset: mirrored, and tinted when asked (a second garment or house
    model the worker cannot mistake for the first)."""
    image = ImageOps.mirror(Image.open(source).convert("RGB"))
    if tint:
        image = Image.blend(image, Image.new("RGB", image.size, tint), 0.5)
    image.save(target)
    return target


@pytest.fixture(scope="module")
def lb_worker(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The load-balancing worker, with two house models (a catalog needs several)."""
    folder = tmp_path_factory.mktemp("house-models")
    shutil.copy(HOUSE_MODEL, folder / HOUSE_MODEL.name)
    mirrored(HOUSE_MODEL, folder / "1_mirrored.png")
    port, server = start_worker(tiny_root, tmp_path_factory.mktemp("page") / "lb.log", True,
                                MODEL_IMAGES_DIR=str(folder))  # fmt: skip
    with server:
        yield f"http://127.0.0.1:{port}"


def choose_a_small_job(page: Page) -> None:
    """House model 0, the asset garment, 2 steps at the smallest size the tiny tree allows."""
    page.get_by_role("radio", name=re.compile("House model 0")).check()
    page.locator('input[type="file"][name="garment"]').set_input_files(GARMENT)
    expect(page.locator('[data-image="garment"] .preview')).to_be_visible()
    page.locator('input[name="steps"]').fill("2")
    page.locator('select[name="resolution"]').select_option("256x192")


def posted(page: Page, route: str) -> list:
    """The page's POST requests to URLs ending in `route`, recorded as they are sent."""
    requests: list = []
    page.on("request", lambda r: requests.append(r) if r.method == "POST" and r.url.endswith(route) else None)
    return requests


def enter_the_key(page: Page) -> None:
    """Type the API key as a person does; leaving the field stores it for the tab."""
    page.locator("#api-key").fill(API_KEY)
    page.locator("#api-key").press("Tab")  # a change event: stored for this tab, thumbnails load


def sent_jobs(requests: list) -> list[dict]:
    return [json.loads(request.post_data)["input"] for request in requests]


def test_queue_endpoint_page_runs_a_job_with_progress_and_shows_the_results(
    queue_worker: str, page: Page
) -> None:
    console = Console(page)
    runs = posted(page, "/run")
    page.goto(f"{queue_worker}/")
    expect(page.locator("#house-models")).to_have_text("Enter the API key to see the house models.")
    enter_the_key(page)
    expect(page.locator(".thumb img")).to_have_attribute("src", re.compile("^blob:"))
    assert page.evaluate("() => sessionStorage.getItem('ootd-worker.api-key')") == API_KEY
    assert page.evaluate("() => localStorage.length") == 0

    choose_a_small_job(page)
    page.locator('input[name="return_mask"]').check()
    page.locator('input[name="seed"]').fill("4242")
    assert page.locator('#tryon button[type="submit"]').count() == 1
    page.locator('#tryon button[type="submit"]').click()

    results = page.locator("#results img")
    expect(results).to_have_count(2, timeout=JOB_TIMEOUT_MS)  # the try-on and its mask
    for index in range(2):
        assert results.nth(index).evaluate("image => image.complete && image.naturalWidth") > 0
    expect(page.locator("#summary")).to_contain_text("seed 4242")
    expect(page.locator("#log")).to_contain_text("diffusion: step 1 of 2")  # the worker's own update
    expect(page.locator("#log")).to_contain_text("Done")
    download = page.locator("#results figcaption a").first
    assert download.get_attribute("download") == "tryon-seed4242-1.png"
    assert download.get_attribute("href").startswith("data:image/png;base64,")
    # The job went through the endpoint's own route, with only what differs from the defaults:
    # output_size and composite (at the defaults the API gives the page) were left out.
    (job,) = sent_jobs(runs)
    assert runs[0].url == f"{queue_worker}/v2/playground/run"
    assert {key: job[key] for key in ("person_index", "steps", "resolution", "seed", "return_mask")} == {
        "person_index": 0, "steps": 2, "resolution": "256x192", "seed": 4242, "return_mask": True
    }  # fmt: skip
    assert job["garment"].startswith("data:image/png;base64,") and set(job) == {
        "person_index", "garment", "steps", "resolution", "seed", "return_mask"
    }  # fmt: skip
    page.locator('select[name="output_size"]').select_option("frame")
    page.locator('input[name="composite"]').uncheck()
    shown = json.loads(page.locator("#request").text_content().split("\n", 1)[1])["input"]
    assert shown["output_size"] == "frame" and shown["composite"] is False

    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        page.locator('select[name="output_size"]').select_option("input")
        page.locator('input[name="composite"]').check()
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    console.check()


def test_queue_endpoint_page_shows_the_workers_error_beside_the_field(queue_worker: str, page: Page) -> None:
    console = Console(page)
    page.goto(f"{queue_worker}/")
    page.locator('input[type="file"][name="garment"]').set_input_files(GARMENT)
    page.locator('#tryon button[type="submit"]').click()  # no key yet: the endpoint refuses
    alert = page.get_by_role("alert")
    expect(alert).to_have_text(re.compile(r"^missing or wrong API key"))
    expect(page.locator('[data-error-for="api-key"]')).to_contain_text("API key")

    enter_the_key(page)
    page.locator('input[type="text"][name="garment"]').fill("ftp://example.com/shirt.png")
    page.locator('input[name="steps"]').fill("99")
    page.locator('#tryon button[type="submit"]').click()
    garment = "garment: ftp:// URLs are not allowed (use an http(s) URL, base64 or a data URI)"
    steps = "steps must be an integer from 1 to 50, not 99"
    expect(alert).to_have_text(f"invalid input: {garment}; {steps}", timeout=JOB_TIMEOUT_MS)
    expect(page.locator('[data-error-for="garment"]')).to_have_text(garment)
    expect(page.locator('[data-error-for="steps"]')).to_have_text(steps)
    expect(page.locator('input[name="steps"]')).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#results img")).to_have_count(0)
    console.check(refused=[401])  # the request sent without the key


def test_load_balancing_endpoint_page_runs_a_job_and_shows_a_refusal(lb_worker: str, page: Page) -> None:
    console = Console(page)
    tryons = posted(page, "")
    page.goto(f"{lb_worker}/")
    expect(page.locator("#endpoint")).to_have_text("load-balancing endpoint: POST /tryon")
    expect(page.locator("#key-box")).to_be_hidden()  # no LOCAL_API_KEY on this worker
    expect(page.locator(".thumb img").first).to_have_attribute("src", re.compile("^blob:"))
    choose_a_small_job(page)
    page.locator('select[name="output_format"]').select_option("jpeg")
    page.locator('#tryon button[type="submit"]').click()
    expect(page.locator("#results img")).to_have_count(1, timeout=JOB_TIMEOUT_MS)
    image = page.locator("#results img")
    assert image.evaluate("image => image.complete && image.naturalWidth") > 0
    assert image.get_attribute("src").startswith("data:image/jpeg;base64,")
    expect(page.locator("#summary")).to_contain_text(re.compile(r"seed \d+"))
    assert [request.url for request in tryons] == [f"{lb_worker}/tryon"]

    page.locator('select[name="category"]').select_option("lower_body")  # HD dresses upper bodies only
    page.locator('#tryon button[type="submit"]').click()
    refusal = "model_type 'hd' supports only category 'upper_body', not 'lower_body'"
    expect(page.get_by_role("alert")).to_contain_text(f"invalid input: {refusal}", timeout=JOB_TIMEOUT_MS)
    expect(page.locator('[data-error-for="model_type"]')).to_contain_text(refusal)
    console.check(refused=[400])


def test_page_routes_are_read_only_and_honour_the_key(queue_worker: str) -> None:
    status, config = json_request("GET", f"{queue_worker}/playground/config")
    assert status == 200 and config["mode"] == "queue" and config["key_required"] is True
    assert config["routes"]["run"] == "/v2/playground/run"
    assert "256x192" in config["fields"]["choices"]["resolution"]  # EXTRA_RESOLUTIONS reaches the form
    assert config["fields"]["defaults"]["steps"] == 20
    assert json_request("GET", f"{queue_worker}/house-models")[0] == 401
    status, listing = json_request("GET", f"{queue_worker}/house-models", headers={"Authorization": API_KEY})
    assert status == 200 and listing["models"][0]["name"] == "0_astronaut"
    assert json_request("POST", f"{queue_worker}/house-models", {})[0] in (401, 405)
    status, body = json_request("GET", f"{queue_worker}/house-models/7/thumbnail",
                                headers={"Authorization": API_KEY})  # fmt: skip
    assert status == 404 and "no house model 7" in body["error"]
    for route, kind in (("image", "image/png"), ("thumbnail", "image/jpeg")):
        url = f"{queue_worker}/house-models/0/{route}"
        request = urllib.request.Request(url, headers={"Authorization": API_KEY})
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.headers["Content-Type"] == kind
            data = answer.read()
        if route == "image":
            assert data == (REPO / "assets" / "models" / "0_astronaut.png").read_bytes()
        else:
            assert max(Image.open(io.BytesIO(data)).size) <= 320


def test_queue_endpoint_page_dresses_an_outfit_in_two_passes(
    queue_worker: str, page: Page, tmp_path: Path
) -> None:
    console = Console(page)
    runs = posted(page, "/run")
    page.goto(f"{queue_worker}/")
    enter_the_key(page)
    choose_a_small_job(page)
    page.locator('input[name="seed"]').fill("77")
    page.locator('input[name="return_mask"]').check()
    expect(page.locator("#second-garment")).to_be_hidden()
    page.get_by_role("button", name=re.compile("Add a second garment")).click()
    trousers = mirrored(GARMENT, tmp_path / "trousers.png", tint=(40, 60, 160))
    page.locator('input[type="file"][name="garments.1.garment"]').set_input_files(trousers)
    expect(page.locator('[data-image="garments.1.garment"] .preview')).to_be_visible()
    expect(page.locator('select[name="garments.1.category"]')).to_have_value("lower_body")

    # Two upper-body garments make no outfit: the worker's sentence lands beside the second
    # garment's category.
    page.locator('select[name="garments.1.category"]').select_option("upper_body")
    page.locator('#tryon button[type="submit"]').click()
    several = "garments: an outfit takes at most one garment per category, not several upper_body"
    expect(page.get_by_role("alert")).to_have_text(f"invalid input: {several}", timeout=JOB_TIMEOUT_MS)
    expect(page.locator('[data-error-for="garments.1.category"]')).to_have_text(several)

    page.locator('select[name="garments.1.category"]').select_option("lower_body")
    page.locator('#tryon button[type="submit"]').click()
    results = page.locator("#results img")
    expect(results).to_have_count(3, timeout=JOB_TIMEOUT_MS)  # the outfit and each pass's mask
    for index in range(3):
        assert results.nth(index).evaluate("image => image.complete && image.naturalWidth") > 0
    outfit = "seed 77 · outfit: lower body (dc), then upper body (hd)"
    expect(page.locator("#summary")).to_contain_text(outfit)
    expect(page.locator("#log")).to_contain_text("diffusion (pass 2 of 2): step 1 of 2")
    captions = page.locator("#results figcaption").all_text_contents()
    assert [caption.split(" · ")[0] for caption in captions] == [
        "Result 1", "Pass 1 (lower body): mask", "Pass 2 (upper body): mask"
    ]  # fmt: skip
    # The request is an outfit: the first garment's fields moved into item 0, no model type
    # (each garment gets the one its category needs), the default order left out.
    refused, job = sent_jobs(runs)
    assert [item["category"] for item in refused["garments"]] == ["upper_body", "upper_body"]
    assert set(job) == {"person_index", "garments", "steps", "resolution", "seed", "return_mask"}
    first, second = job["garments"]
    assert set(first) == set(second) == {"garment", "category"}
    assert (first["category"], second["category"]) == ("upper_body", "lower_body")
    assert first["garment"] != second["garment"] and second["garment"].startswith("data:image/png;base64,")

    # Taken away again, the second garment leaves a single job.
    page.get_by_role("button", name="Remove the second garment").click()
    shown = json.loads(page.locator("#request").text_content().split("\n", 1)[1])["input"]
    assert "garments" not in shown and shown["garment"].startswith("data:image/png")
    console.check()


def test_load_balancing_endpoint_page_runs_a_catalog(lb_worker: str, page: Page) -> None:
    console = Console(page)
    tryons = posted(page, "")
    page.goto(f"{lb_worker}/")
    expect(page.get_by_role("radio")).to_have_count(2)
    page.get_by_label("Several house models").check()
    expect(page.get_by_role("radio")).to_have_count(0)
    expect(page.get_by_role("checkbox", name=re.compile("House model 0"))).to_be_checked()
    page.get_by_role("checkbox", name=re.compile("House model 1")).check()
    page.locator('input[type="file"][name="garment"]').set_input_files(GARMENT)
    page.locator('input[name="steps"]').fill("2")
    page.locator('select[name="resolution"]').select_option("256x192")
    page.locator('input[name="return_mask"]').check()
    page.locator('#tryon button[type="submit"]').click()

    people = page.locator("#results .person")
    expect(people).to_have_count(2, timeout=JOB_TIMEOUT_MS)
    for index in range(2):
        expect(people.nth(index).locator("h3")).to_have_text(f"House model {index}")
        images = people.nth(index).locator("img")
        expect(images).to_have_count(2)  # the try-on and that person's mask
        assert images.first.evaluate("image => image.complete && image.naturalWidth") > 0
        # Each result is compared with its own person's photo.
        assert people.nth(index).locator(".compare.with-before").evaluate(
            "frame => frame.style.backgroundImage"
        ).startswith('url("blob:')
    expect(page.locator("#summary")).to_contain_text("2 of 2 people dressed")
    (job,) = sent_jobs(tryons)
    assert job["person_index"] == [0, 1]

    # Back to one house model: radios again, the first of the picked ones kept.
    page.get_by_label("Several house models").uncheck()
    expect(page.get_by_role("radio", name=re.compile("House model 0"))).to_be_checked()
    expect(page.get_by_role("radio", name=re.compile("House model 1"))).not_to_be_checked()
    shown = json.loads(page.locator("#request").text_content().split("\n", 1)[1])["input"]
    assert shown["person_index"] == 0
    console.check()

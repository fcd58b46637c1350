"""The clinicians' app in a real browser (Debian's chromium through Playwright) against a real
``care-companion serve``: a technician registers a patient (whose name is an HTML injection attempt) and uploads a
chest film, a photograph (refused, no finding) and a wrist PA + lateral pair; a radiologist sees the studies in
the worklist in the API's triage order, opens one, toggles the heat map (the canvas pixels change), corrects the
label; the verdict is then in ``/v1/studies/{id}/feedback``, in the feedback CSV and in the monitoring API's online
figures. Screenshots of the worklist and the reading view go to ``test-artifacts/``."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, write_bundle
from tests.e2e.common import CHROMIUM, PASSWORD, photo_rejecting_chest_bundle, playwright_or_skip, serve_with_users

TECH, RAD = "tech.app", "dr.app"
ARTIFACTS = REPO / "test-artifacts"
XSS_NAME = '<img src=x onerror="window.__xss=1">Ann'


@pytest.fixture
def playwright_api() -> Any:
    return playwright_or_skip()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[str]:
    from care_companion.tasks import WRIST

    chest = photo_rejecting_chest_bundle(tmp_path / "chest-bundle")
    wrist = write_bundle(tmp_path / "wrist-bundle", task=WRIST, backbone="test_resnet", reject_bias=-20.0)
    users = {TECH: "technician", RAD: "radiologist"}
    with serve_with_users(tmp_path, chest, wrist, users, inference_threads="1", monitor_refresh_seconds="1") as (
        url,
        _,
        _,
    ):
        yield url


def _file(path: Path, pixels: np.ndarray) -> Path:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    path.write_bytes(out.getvalue())
    return path


def _token(url: str, username: str) -> dict[str, str]:
    answer = httpx.post(f"{url}/v1/auth/token", data={"username": username, "password": PASSWORD}, timeout=30)
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def _sign_in(page: Any, username: str) -> None:
    page.get_by_test_id("username").fill(username)
    page.get_by_test_id("password").fill(PASSWORD)
    page.get_by_test_id("signin-submit").click()
    page.get_by_test_id("signed-in-user").wait_for()


def test_technician_to_radiologist_in_the_browser(playwright_api: Any, service: str, tmp_path: Path) -> None:
    from care_companion.data.synthetic_chest import natural_images, synth_chest
    from care_companion.data.synthetic_wrist import synthetic_wrist_studies

    rng = np.random.default_rng(3)
    film = _file(tmp_path / "chest.png", synth_chest("pneumonia", rng, 256))
    photo = _file(tmp_path / "photo.png", natural_images(rng, 1, 256)[0])
    study = synthetic_wrist_studies(1, seed=4, size=128)[0]
    pa = _file(tmp_path / "pa.png", study.views["pa"])
    lateral = _file(tmp_path / "lateral.png", study.views["lateral"])
    errors: list[str] = []
    requests: list[str] = []

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # the browser logs every 4xx answer (the photo's refusal) as "Failed to load resource": those are expected
        page.on(
            "console",
            lambda msg: (
                errors.append(msg.text)
                if msg.type == "error" and not msg.text.startswith("Failed to load resource")
                else None
            ),
        )
        page.on("request", lambda request: requests.append(request.url))
        page.goto(f"{service}/app")

        # -- the technician ------------------------------------------------------------------------------------
        _sign_in(page, TECH)
        page.get_by_test_id("upload-view").wait_for()
        page.locator("#register summary").click()
        page.get_by_test_id("new-mrn").fill("APP-1")
        page.get_by_test_id("new-name").fill(XSS_NAME)
        page.get_by_test_id("patient-register").click()
        chosen = page.get_by_test_id("patient-chosen")
        chosen.filter(has_text="APP-1").wait_for()
        assert XSS_NAME in chosen.inner_text()  # shown as text, not markup
        page.get_by_test_id("task").select_option("chest")
        page.get_by_test_id("file-frontal").set_input_files(str(film))
        page.get_by_test_id("send").click()
        result = page.get_by_test_id("result")
        result.wait_for()
        assert "radiologist" in result.inner_text().lower()  # the review warning on every result
        assert page.get_by_test_id("finding").inner_text().startswith("AI finding: ")

        page.get_by_test_id("file-frontal").set_input_files(str(photo))
        page.get_by_test_id("send").click()
        message = page.get_by_test_id("message")
        message.filter(has_text="Refused").wait_for()
        assert "no finding" in message.inner_text()

        broken = tmp_path / "broken.png"
        broken.write_bytes(film.read_bytes()[:200])  # a truncated PNG
        page.get_by_test_id("file-frontal").set_input_files(str(broken))
        page.get_by_test_id("send").click()
        message.filter(has_text="Not read").wait_for()
        page.context.set_offline(True)  # a lost connection
        page.get_by_test_id("file-frontal").set_input_files(str(film))
        page.get_by_test_id("send").click()
        message.filter(has_text="connection lost").wait_for()
        page.context.set_offline(False)

        page.get_by_test_id("task").select_option("wrist")
        page.get_by_test_id("file-pa").set_input_files(str(pa))
        page.get_by_test_id("file-lateral").set_input_files(str(lateral))
        page.get_by_test_id("send").click()
        page.get_by_test_id("result").filter(has_text="pa, lateral").wait_for()
        page.get_by_test_id("sign-out").click()

        # -- the radiologist -----------------------------------------------------------------------------------
        _sign_in(page, RAD)
        rows = page.get_by_test_id("worklist-row")
        rows.first.wait_for()
        headers = _token(service, RAD)
        listed = httpx.get(f"{service}/v1/worklist", headers=headers, timeout=30).json()["data"]
        shown = [int(v) for v in rows.evaluate_all("rows => rows.map(r => r.dataset.studyId)")]
        assert shown == [item["study_id"] for item in listed] and len(shown) >= 2  # the API's triage order
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "app-worklist.png"), full_page=True)

        # open a study whose heat map has something to show
        def has_signal(item: dict[str, Any]) -> bool:
            for view in item["images"]:
                png = httpx.get(
                    f"{service}/v1/predictions/{item['prediction_id']}/heatmap/{view}.png", headers=headers, timeout=30
                )
                if png.status_code == 200 and np.asarray(Image.open(io.BytesIO(png.content)))[..., 3].max() > 0:
                    return True
            return False

        index = next(i for i, item in enumerate(listed) if has_signal(item))
        rows.nth(index).click()
        canvas = page.locator("canvas").first
        page.wait_for_function(
            "() => [...document.querySelectorAll('canvas')].every(c => Number(c.dataset.drawn) >= 1)"
        )
        page.wait_for_timeout(300)
        with_map = canvas.evaluate("c => c.toDataURL()")
        page.get_by_test_id("show-heatmap").uncheck()
        without_map = canvas.evaluate("c => c.toDataURL()")
        assert with_map != without_map, "toggling the heat map did not change the canvas"
        page.get_by_test_id("show-heatmap").check()
        assert "not a diagnosis" in page.get_by_test_id("reader-warning").inner_text()
        page.screenshot(path=str(ARTIFACTS / "app-reading.png"), full_page=True)

        item = listed[index]
        task_classes = httpx.get(f"{service}/v1/tasks", timeout=30).json()
        classes = next(t["classes"] for t in task_classes if t["name"] == item["task"])
        truth = next(c for c in classes if c != item["label"])
        page.get_by_test_id("true-label").select_option(truth)
        page.get_by_test_id("comment").fill("<b>not bold</b>")
        page.get_by_test_id("correct").click()
        page.get_by_test_id("message").filter(has_text="corrected").wait_for()
        assert page.evaluate("() => window.__xss") is None

        # the next awaiting study opens by itself; confirming it takes one key
        other = next(i for i, row in enumerate(listed) if i != index)
        page.get_by_test_id("reading-view").wait_for()
        page.get_by_test_id("reader-finding").filter(has_text=listed[other]["label"]).wait_for()
        page.locator("body").press("c")
        page.get_by_test_id("message").filter(has_text="confirmed").wait_for()

        # tablet width: the worklist fits without scrolling sideways
        page.set_viewport_size({"width": 800, "height": 1100})
        page.get_by_test_id("nav-worklist").click()
        page.get_by_test_id("filter-status").select_option("reviewed")
        page.get_by_test_id("worklist-refresh").click()
        page.get_by_test_id("worklist-row").nth(1).wait_for()
        assert page.evaluate("() => document.scrollingElement.scrollWidth") <= 800
        browser.close()

    feedback = httpx.get(f"{service}/v1/studies/{item['study_id']}/feedback", headers=headers, timeout=30).json()
    assert [(f["true_label"], f["comment"]) for f in feedback["data"]] == [(truth, "<b>not bold</b>")]
    confirmed = httpx.get(f"{service}/v1/studies/{listed[other]['study_id']}/feedback", headers=headers, timeout=30)
    assert [(f["true_label"], f["agrees"]) for f in confirmed.json()["data"]] == [(listed[other]["label"], True)]
    csv = httpx.get(f"{service}/v1/feedback/export.csv", headers=headers, timeout=30).text
    assert truth in csv and str(item["study_id"]) in csv
    patient = listed[0]["patient_id"]
    opened = httpx.get(f"{service}/v1/studies?patient_id={patient}&task=chest", headers=headers, timeout=30).json()
    assert opened["count"] == 1  # the refused, corrupt and unsent uploads left no empty study behind
    health = httpx.get(f"{service}/v1/monitoring/health", headers=headers, timeout=30).json()
    assert health["tasks"][item["task"]]["online"]["studies"] >= 1
    assert not errors, errors
    assert all(url.startswith(service) for url in requests), [u for u in requests if not u.startswith(service)]

"""The monitoring dashboard in a real browser (Debian's chromium through Playwright) against a real
``care-companion serve`` process that has answered real traffic.

What happens:

1. A chest bundle (random ResNet-18 whose "unknown" logit is a linear probe that tells synthetic films from
   photographs, so photographs really get 422; with its drift reference profile) and a wrist bundle (no
   profile: its drift figures are "unavailable", which the page must say) are written to ``tmp_path``; a SQLite
   records database is migrated; a technician and a radiologist are created; the service starts on a free port
   with low drift thresholds (a check every 5 inputs once 10 images are in the window).
2. Traffic over HTTP: 20 films like the reference (96 px) then 20 from a "new scanner" (256 px, so the image
   features drift), photographs (422), a truncated PNG and a tiny image (400), anonymous wrist studies, and
   chest and wrist studies of a patient whose uploads radiologists then confirm or correct (online figures).
   The API's figures are first checked against what the test sent (counts by class and by refusal reason,
   window sizes, sensitivity from the verdicts), so the page is compared with numbers known to be right.
3. The browser opens ``/dashboard``: nothing is shown and no monitoring call is made before sign-in; a wrong
   password gives a message; the technician signs in; every checked figure is compared with the API (below).
4. A full-page screenshot goes to ``test-artifacts/dashboard.png`` (repository root) and to ``tmp_path``.
5. "Refresh now" redraws; a token the server refuses (401) brings the sign-in form back with a message and
   no figures; after signing in again, "Run drift check" adds one stored chest check to the p-value history;
   sign-out hides everything. No uncaught page error, and every request the page made went to the service's
   own origin (no CDN, no fonts).

How the page's figures are compared with the API (the snapshot problem): the page fetches drift and health
itself and refreshes every 15 s. The test captures the very JSON answers the page drew (Playwright's
``expect_response`` around the sign-in click), waits for the page to mark itself loaded
(``body[data-loaded]``), then compares every checked figure in the DOM with that captured JSON, formatted as
below. Separately it calls ``/v1/monitoring/drift?refresh=false`` and ``/v1/monitoring/health`` with the
page's own token (read from ``sessionStorage``) and requires the same answers: after the traffic the test
forced the last drift check (``refresh=true``) and sends nothing more, so the service's state is settled and
both snapshots must agree (health's ``at`` aside). A mismatch therefore means the page drew something else
than the API says; and the API's answer was itself checked against the traffic sent.

Number formats (``dashboard.js``; the test mirrors them with JavaScript's rounding, exact binary value with
ties up, and checks the mirror against the page's own formatters in Chromium):

- p-values: 3 significant digits, ``toPrecision(3)`` for p >= 0.001 ("0.0635", "1.00") and
  ``toExponential(2)`` below ("6.61e-35"); a family not run yet shows "—".
- rates (online figures, rejection rates, class shares): ``toFixed(3)``; online figures add their counts,
  "0.940 (47/50)"; no data: "—".
- counts: plain integers; latency: ``toFixed(1)`` + " ms"; throughput: ``toFixed(1)`` + " /min".
- feature medians: ``toPrecision(4)`` without trailing zeros ("0.3348", "96"); KL baseline: ``toPrecision(3)``.
- drift badge: "Drift detected", "No drift", "Not enough data" or "Drift check unavailable" (``data-state``
  drift / no-drift / insufficient / unavailable).

Only the service process this test started is stopped (by its PID).
"""

from __future__ import annotations

import io
import re
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, write_bundle
from tests.e2e.common import CHROMIUM, PASSWORD, photo_rejecting_chest_bundle, playwright_or_skip, serve_with_users

TECH, RAD = "tech.jones", "dr.rad"
FAMILIES = ("features", "embedding", "class_mix", "confidence", "rejections")
DASH = "—"
ARTIFACT = REPO / "test-artifacts" / "dashboard.png"
TOKEN_KEY = "careCompanion.dashboard.token"


# -- the page's number formats, with JavaScript's rounding ------------------------------------------------------


def js_fixed(x: float, digits: int) -> str:
    """``Number.prototype.toFixed(digits)`` for x >= 0."""
    return str(Decimal(x).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def _mantissa(x: float, digits: int) -> tuple[Decimal, int]:
    d = Decimal(x)
    exponent = d.adjusted()
    unit = Decimal(1).scaleb(-(digits - 1))
    mantissa = d.scaleb(-exponent).quantize(unit, rounding=ROUND_HALF_UP)
    if mantissa >= 10:
        exponent += 1
        mantissa = d.scaleb(-exponent).quantize(unit, rounding=ROUND_HALF_UP)
    return mantissa, exponent


def js_exponential(x: float, digits: int) -> str:
    """``Number.prototype.toExponential(digits)`` for x >= 0 ("6.61e-35", "1.00e+0")."""
    if x == 0:
        return f"{js_fixed(0.0, digits)}e+0"
    mantissa, exponent = _mantissa(x, digits + 1)
    return f"{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent)}"


def js_precision(x: float, digits: int) -> str:
    """``Number.prototype.toPrecision(digits)`` for x >= 0."""
    if x == 0:
        return js_fixed(0.0, digits - 1)
    _, exponent = _mantissa(x, digits)
    if exponent < -6 or exponent >= digits:
        return js_exponential(x, digits - 1)
    return str(Decimal(x).quantize(Decimal(1).scaleb(-(digits - 1 - exponent)), rounding=ROUND_HALF_UP))


def fmt_p(p: float | None) -> str:
    if p is None:
        return DASH
    return js_exponential(p, 2) if p < 0.001 else js_precision(p, 3)


def fmt_rate(x: float | None) -> str:
    return DASH if x is None else js_fixed(x, 3)


def fmt_count(x: float | None) -> str:
    return DASH if x is None else str(round(x))


def fmt_ms(x: float | None) -> str:
    return DASH if x is None else f"{js_fixed(x, 1)} ms"


def fmt_median(x: float) -> str:
    text = js_precision(x, 4)
    if "e" not in text and "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def fmt_ratio(rate: float | None, part: int, whole: int) -> str:
    return f"{fmt_rate(rate)} ({part}/{whole})"


FORMAT_CASES: list[tuple[str, float]] = [
    ("p", 1.0), ("p", 0.0634768), ("p", 6.605703256650721e-35), ("p", 0.00099996), ("p", 0.001), ("p", 0.999999),
    ("p", 0.0), ("p", 1.5e-7), ("rate", 0.0625), ("rate", 1.0), ("rate", 2 / 3), ("rate", 0.0005),
    ("median", 96.0), ("median", 0.33484583), ("median", 256.0), ("median", 6.912), ("median", 0.0),
    ("ms", 12.25), ("ms", 0.05), ("kl", 0.032717671491787836),
]  # fmt: skip
PYTHON_FORMATS: dict[str, Callable[[float], str]] = {
    "p": fmt_p, "rate": fmt_rate, "median": fmt_median, "ms": fmt_ms, "kl": lambda x: js_precision(x, 3),
}  # fmt: skip
PAGE_FORMATS = "([kind, x]) => window.CareDashboardFormats[kind](x)"


def test_formats_mirror_javascript() -> None:
    """The Python mirror of the page's formats, on values whose V8 output is known (the browser test checks the
    same cases in Chromium itself)."""
    assert fmt_p(1.0) == "1.00" and fmt_p(0.0634768) == "0.0635" and fmt_p(6.605703256650721e-35) == "6.61e-35"
    assert fmt_p(0.00099996) == "1.00e-3" and fmt_p(0.001) == "0.00100" and fmt_p(0.999999) == "1.00"
    assert fmt_p(None) == DASH and fmt_p(0.0) == "0.00e+0"
    assert fmt_rate(0.0625) == "0.063" and fmt_rate(1.0) == "1.000" and fmt_rate(2 / 3) == "0.667"
    assert fmt_median(96.0) == "96" and fmt_median(0.33484583) == "0.3348" and fmt_median(256.0) == "256"
    assert fmt_median(6.9120) == "6.912" and fmt_median(0.0) == "0" and fmt_ms(12.25) == "12.3 ms"
    assert fmt_p(1.5e-7) == "1.50e-7" and fmt_rate(0.0005) == "0.001" and fmt_ms(0.05) == "0.1 ms"


@pytest.fixture
def playwright_api() -> Any:
    return playwright_or_skip()


# -- the service ---------------------------------------------------------------------------------------------------


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


class Service:
    """A ``care-companion serve`` subprocess and what the test knows about the traffic it answered."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log
        self.predictions: dict[str, Counter[str]] = {"chest": Counter(), "wrist": Counter()}
        self.rejected: dict[str, Counter[str]] = {"chest": Counter(), "wrist": Counter()}
        self.model_inputs: Counter[str] = Counter()  # inputs that reached a model (answered or 422)
        self.model_images: Counter[str] = Counter()  # images of the task among them
        self.verdicts: dict[str, list[tuple[bool, str, str]]] = {"chest": [], "wrist": []}  # positive, label, truth

    def token(self, username: str) -> str:
        answer = httpx.post(f"{self.url}/v1/auth/token", data={"username": username, "password": PASSWORD}, timeout=30)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["access_token"])


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    """The real service on a free port, serving both bundles, with a migrated database and two users."""
    from care_companion.tasks import WRIST

    chest = photo_rejecting_chest_bundle(tmp_path / "chest-bundle")
    # no drift profile: "unavailable"; a random model that never picks the reject class, so every study is answered
    wrist = write_bundle(tmp_path / "wrist-bundle", task=WRIST, reject_bias=-20.0)
    users = {TECH: "technician", RAD: "radiologist"}
    with serve_with_users(
        tmp_path,
        chest,
        wrist,
        users,
        drift_check_every="5",
        drift_min_images="10",
        drift_permutations="50",
        monitor_refresh_seconds="1",
        inference_threads="1",
    ) as (url, proc, log):
        yield Service(url, proc, log)


# -- traffic ------------------------------------------------------------------------------------------------------


def _send_chest(svc: Service, headers: dict[str, str], data: bytes, name: str, study_id: int | None = None) -> dict:
    form = {"study_id": str(study_id)} if study_id is not None else None
    answer = httpx.post(
        f"{svc.url}/v1/predict/chest", files={"file": (name, data, "image/png")}, data=form, headers=headers, timeout=60
    )
    body = answer.json()
    if answer.status_code == 200:
        svc.predictions["chest"][body["label"]] += 1
        svc.model_inputs["chest"] += 1
        svc.model_images["chest"] += 1
    else:
        assert answer.status_code in (400, 422), answer.text
        svc.rejected["chest"][body["error"]] += 1
        if answer.status_code == 422:
            svc.model_inputs["chest"] += 1  # it reached the model, which refused it
    return {"status": answer.status_code, **body}


def _send_wrist(
    svc: Service, headers: dict[str, str], views: dict[str, np.ndarray], study_id: int | None = None
) -> dict:
    files = {view: (f"{view}.png", _png(pixels), "image/png") for view, pixels in views.items()}
    form = {"study_id": str(study_id)} if study_id is not None else None
    answer = httpx.post(f"{svc.url}/v1/predict/wrist", files=files, data=form, headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    svc.predictions["wrist"][body["label"]] += 1
    svc.model_inputs["wrist"] += 1
    svc.model_images["wrist"] += len(views)
    return body


def _traffic(svc: Service) -> None:
    from care_companion.data.synthetic_chest import natural_images, synth_chest
    from care_companion.data.synthetic_wrist import synthetic_wrist_studies

    tech = {"Authorization": f"Bearer {svc.token(TECH)}"}
    rad = {"Authorization": f"Bearer {svc.token(RAD)}"}
    rng = np.random.default_rng(7)
    classes = ("normal", "pneumonia", "tuberculosis")
    for i in range(20):  # like the reference profile's films
        _send_chest(svc, tech, _png(synth_chest(classes[i % 3], rng, 96)), f"film{i}.png")
    for i in range(20):  # a "new scanner": larger films, so the image features drift
        _send_chest(svc, tech, _png(synth_chest(classes[i % 3], rng, 256)), f"new{i}.png")
    photos = [_send_chest(svc, tech, _png(p), f"photo{i}.png") for i, p in enumerate(natural_images(rng, 5, 256))]
    assert sum(p["status"] == 422 and p["error"] == "not_a_chest_xray" for p in photos) >= 3, photos
    whole = _png(synth_chest("normal", rng, 96))
    assert _send_chest(svc, tech, whole[: len(whole) // 2], "cut.png")["error"] == "truncated"
    assert _send_chest(svc, tech, _png(np.full((32, 32), 128, np.uint8)), "tiny.png")["error"] == "too_small"
    for study in synthetic_wrist_studies(4, seed=3, size=128, one_view_rate=0.0):
        _send_wrist(svc, tech, study.views)

    # a patient's studies, uploaded with the study, then confirmed or corrected by a radiologist
    patient = httpx.post(f"{svc.url}/v1/patients", json={"mrn": "E2E-1", "name": "Test Patient"}, headers=tech)
    assert patient.status_code == 201, patient.text
    patient_id = patient.json()["id"]

    def new_study(task: str) -> int:
        answer = httpx.post(f"{svc.url}/v1/studies", json={"patient_id": patient_id, "task": task}, headers=tech)
        assert answer.status_code == 201, answer.text
        return int(answer.json()["id"])

    def confirm(study_id: int, truth: str) -> None:
        answer = httpx.post(f"{svc.url}/v1/studies/{study_id}/feedback", json={"true_label": truth}, headers=rad)
        assert answer.status_code == 201, answer.text

    for truth in ("pneumonia", "tuberculosis", "normal", "pneumonia", "normal", "tuberculosis"):
        study_id = new_study("chest")
        result = _send_chest(svc, tech, _png(synth_chest(truth, rng, 96)), f"study-{truth}.png", study_id)
        assert result["status"] == 200, result
        confirm(study_id, truth)
        svc.verdicts["chest"].append((result["decision"]["positive"], result["label"], truth))
    for study in synthetic_wrist_studies(3, seed=5, size=128, one_view_rate=0.0, fracture_rate=0.67):
        study_id = new_study("wrist")
        result = _send_wrist(svc, tech, study.views, study_id)
        confirm(study_id, study.label)
        svc.verdicts["wrist"].append((result["decision"]["positive"], result["label"], study.label))

    # settle: wait for a running check or run the last one, so the state no longer changes
    settled = httpx.get(f"{svc.url}/v1/monitoring/drift", params={"refresh": "true"}, headers=tech, timeout=120)
    assert settled.status_code == 200, settled.text


def _expected_online(verdicts: list[tuple[bool, str, str]], positives: set[str]) -> dict[str, int]:
    tp = sum(called and truth in positives for called, _, truth in verdicts)
    fn = sum(not called and truth in positives for called, _, truth in verdicts)
    tn = sum(not called and truth not in positives for called, _, truth in verdicts)
    fp = sum(called and truth not in positives for called, _, truth in verdicts)
    correct = sum(label == truth for _, label, truth in verdicts)
    return {"true_positives": tp, "false_negatives": fn, "true_negatives": tn, "false_positives": fp,
            "correct": correct, "studies": len(verdicts)}  # fmt: skip


def _check_api_against_traffic(svc: Service, drift: dict, health: dict) -> None:
    """The API reports what the test sent (so the page is compared with figures known to be right)."""
    for task, positives in (("chest", {"pneumonia", "tuberculosis"}), ("wrist", {"fracture"})):
        figures = health["tasks"][task]
        assert figures["model"]["loaded"] is True
        assert figures["predictions"] == {k: float(v) for k, v in svc.predictions[task].items()}
        assert figures["rejected"] == {k: float(v) for k, v in svc.rejected[task].items()}
        assert figures["traffic"]["predictions"] == sum(svc.predictions[task].values())
        assert figures["traffic"]["latency_ms_p50"] is not None
        online = figures["online"]
        assert {k: online[k] for k in _expected_online(svc.verdicts[task], positives)} == _expected_online(
            svc.verdicts[task], positives
        )
        status = drift["tasks"][task]["status"]
        assert status["window_inputs"] == svc.model_inputs[task]
        assert status["window_images"] == svc.model_images[task]
    chest = drift["tasks"]["chest"]
    assert chest["status"]["available"] is True and chest["status"]["drifted"] is not None
    assert "features" in chest["status"]["flagged"]  # 256 px films against a 96 px reference
    assert len(chest["history"]) >= 5
    assert chest["status"]["rejection_rate"]["current"] > 0
    wrist = drift["tasks"]["wrist"]["status"]
    assert wrist["available"] is False and "profile" in wrist["reason"]


# -- the page -------------------------------------------------------------------------------------------------------


def _badge(task_drift: dict) -> tuple[str, str]:
    status = task_drift["status"]
    if status is None or not status["available"]:
        return "unavailable", "Drift check unavailable"
    if status["drifted"] is True:
        return "drift", "Drift detected"
    if status["drifted"] is False:
        return "no-drift", "No drift"
    return "insufficient", "Not enough data"


def _check_page_against(page: Any, drift: dict, health: dict) -> None:
    """Every checked figure on the page equals the API's answer, formatted as documented above."""

    def shown(testid: str) -> str:
        found = page.get_by_test_id(testid)  # exactly one element (Playwright's strictness), HTML or SVG text
        return str(found.text_content()).strip()

    for task in ("chest", "wrist"):
        task_drift, figures = drift["tasks"][task], health["tasks"][task]
        status = task_drift["status"]
        state, label = _badge(task_drift)
        badge = page.get_by_test_id(f"{task}-drift-badge")
        assert badge.is_visible() and page.get_by_test_id(f"{task}-section").is_visible()
        assert (badge.inner_text(), badge.get_attribute("data-state")) == (label, state)
        assert shown(f"{task}-window-images") == str(status["window_images"])
        assert shown(f"{task}-window-inputs") == str(status["window_inputs"])
        assert shown(f"{task}-window-size") == str(status["window_size"])

        model = figures["model"]
        assert shown(f"{task}-model-loaded") == "Model loaded"
        assert shown(f"{task}-model-version") == (model["version"] or DASH)
        assert shown(f"{task}-model-precision") == model["precision"]
        assert shown(f"{task}-model-demo") == ("yes (not for clinical use)" if model["demo"] else "no")
        assert shown(f"{task}-model-reference") == model["reference"]
        for alias, version in model["aliases"].items():
            assert shown(f"{task}-alias-{alias}") == (DASH if version is None else str(version))

        traffic = figures["traffic"]
        assert shown(f"{task}-traffic-predictions") == str(traffic["predictions"])
        assert shown(f"{task}-latency-p50") == fmt_ms(traffic["latency_ms_p50"]) != DASH
        assert shown(f"{task}-latency-p95") == f"p95 {fmt_ms(traffic['latency_ms_p95'])}"
        assert shown(f"{task}-throughput") == f"{js_fixed(traffic['per_minute'], 1)} /min"

        assert shown(f"{task}-predictions-total") == fmt_count(sum(figures["predictions"].values()))
        assert shown(f"{task}-rejected-total") == fmt_count(sum(figures["rejected"].values()))
        for name, count in figures["predictions"].items():
            assert shown(f"{task}-prediction-{name}") == fmt_count(count)
        for reason, count in figures["rejected"].items():
            assert shown(f"{task}-rejected-{reason}") == fmt_count(count)

        online = figures["online"]
        diseased = online["true_positives"] + online["false_negatives"]
        healthy = online["true_negatives"] + online["false_positives"]
        assert shown(f"{task}-online-sensitivity") == fmt_ratio(
            online["sensitivity"], online["true_positives"], diseased
        )
        assert shown(f"{task}-online-specificity") == fmt_ratio(
            online["specificity"], online["true_negatives"], healthy
        )
        assert shown(f"{task}-online-accuracy") == fmt_ratio(online["accuracy"], online["correct"], online["studies"])
        assert shown(f"{task}-online-studies") == f"{online['studies']} (window {online['window']})"
        assert shown(f"{task}-online-missed") == str(online["false_negatives"])

        history = page.get_by_test_id(f"{task}-pvalue-history")
        assert history.get_attribute("data-checks") == str(len(task_drift["history"]))
        if not status["available"]:
            assert status["reason"] in shown(f"{task}-drift-reason")
            assert page.get_by_test_id(f"{task}-pvalue-features").count() == 0
            continue
        for family in FAMILIES:
            cell = page.get_by_test_id(f"{task}-pvalue-{family}")
            assert cell.inner_text() == fmt_p(status["p_values"][family]), family
            assert cell.get_attribute("data-flagged") == ("true" if family in status["flagged"] else "false")
        drawn = {
            family
            for family in FAMILIES
            if any(point["p_values"].get(family) is not None for point in task_drift["history"])
        }
        assert history.locator("g.chart-series").count() == len(drawn) > 0
        for feature in status["features"]:
            name = feature["name"]
            assert shown(f"{task}-ks-{name}-adjusted") == fmt_p(feature["adjusted"])
            assert shown(f"{task}-ks-{name}-reference") == fmt_median(feature["reference_median"])
            assert shown(f"{task}-ks-{name}-current") == fmt_median(feature["current_median"])
        mix = status["class_mix"]
        for k, name in enumerate(mix["bins"]):
            assert shown(f"{task}-mix-{name}-reference") == fmt_rate(mix["reference"][k])
            assert shown(f"{task}-mix-{name}-current") == fmt_rate(mix["current"][k])
        assert shown(f"{task}-rejection-reference") == fmt_rate(status["rejection_rate"]["reference"])
        assert shown(f"{task}-rejection-current") == fmt_rate(status["rejection_rate"]["current"])
        kl = status["kl_baseline"]
        assert shown(f"{task}-kl-baseline") == (DASH if kl is None else js_precision(kl, 3))


def _canary_report() -> Any:
    """A canary report as ``GET /v1/releases/chest`` gives it while a shadow canary runs, its verdict by the
    service's own rule: the canary caught 12 of 20 diseased studies against production's 95 of 100."""
    from care_companion.config import Settings
    from care_companion.release.report import Agreement, ReleaseReport, VersionEvidence, judge, wilson

    def version(number: int, alias: str, found: int, diseased: int, p95: float) -> VersionEvidence:
        return VersionEvidence(
            version=number,
            alias=alias,
            confirmed_studies=diseased * 2,
            shadowed_studies=12 if alias == "canary" else 0,
            sensitivity=wilson(found, diseased),
            specificity=wilson(diseased - 2, diseased),
            requests=diseased * 10,
            refused=1,
            error_rate=wilson(0, diseased * 10),
            latency_ms_p95=p95,
            drift_checks=2,
            drifted_checks=0,
            latest_drift=False,
        )

    production, canary = version(4, "production", 95, 100, 81.5), version(5, "canary", 12, 20, 84.0)
    verdict, reasons, p_values = judge(canary, production, Settings(release_min_canary_studies=30))
    return ReleaseReport(
        task="chest",
        at="2026-12-04T12:00:00+00:00",
        since="2026-12-01T09:30:00+00:00",
        canary_percent=10,
        mode="shadow",
        production=production,
        canary=canary,
        agreement=Agreement(films=12, same_label=wilson(9, 12), same_decision=wilson(10, 12), canary_refused=0),
        verdict=verdict,
        reasons=reasons,
        p_values=p_values,
    )


def _without_time(health: dict) -> dict:
    return {k: v for k, v in health.items() if k != "at"}


@pytest.mark.browser
@pytest.mark.slow
def test_dashboard_shows_what_the_api_reports(playwright_api: Any, service: Service, tmp_path: Path) -> None:
    svc = service
    _traffic(svc)
    origin = svc.url

    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            requests: list[str] = []
            page_errors: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.on("pageerror", lambda error: page_errors.append(str(error)))

            # before sign-in: the form, no figures, no monitoring call
            page.goto(f"{origin}/dashboard")
            page.get_by_test_id("signin-form").wait_for(state="visible")
            for kind, value in FORMAT_CASES:  # the page's own formatters agree with the mirror used below
                assert page.evaluate(PAGE_FORMATS, [kind, value]) == PYTHON_FORMATS[kind](value), (kind, value)
            assert page.get_by_test_id("decision-support-banner").is_visible()
            assert "radiologist must review" in page.get_by_test_id("decision-support-banner").inner_text()
            assert page.get_by_test_id("dashboard").is_hidden()
            assert page.get_by_test_id("chest-window-images").count() == 0
            assert not [u for u in requests if "/v1/monitoring/" in u]

            page.get_by_test_id("username").fill(TECH)
            page.get_by_test_id("password").fill("wrong-password-123")
            page.get_by_test_id("signin-submit").click()
            message = page.get_by_test_id("signin-message")
            message.wait_for(state="visible")
            assert message.inner_text() == "Wrong username or password."
            assert page.get_by_test_id("dashboard").is_hidden()

            # the chest canary report comes from a running canary (this service has none): the page draws it whole
            report = _canary_report()
            page.route(
                "**/v1/releases/chest",
                lambda route: route.fulfill(status=200, content_type="application/json", body=report.model_dump_json()),
            )

            # sign in, capturing the very answers the page draws
            page.get_by_test_id("password").fill(PASSWORD)
            with (
                page.expect_response(lambda r: "/v1/monitoring/drift" in r.url, timeout=120_000) as drift_seen,
                page.expect_response(lambda r: "/v1/monitoring/health" in r.url, timeout=120_000) as health_seen,
            ):
                page.get_by_test_id("signin-submit").click()
            page.wait_for_selector("body[data-loaded]", timeout=60_000)
            assert drift_seen.value.status == 200 and health_seen.value.status == 200
            assert "refresh=false" in drift_seen.value.url
            page_drift, page_health = drift_seen.value.json(), health_seen.value.json()

            # the API, asked with the page's own token, gives the same snapshot
            token = page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')")
            assert token and page.get_by_test_id("signin").is_hidden()
            headers = {"Authorization": f"Bearer {token}"}
            api_drift = httpx.get(
                f"{origin}/v1/monitoring/drift", params={"refresh": "false"}, headers=headers, timeout=60
            )
            api_health = httpx.get(f"{origin}/v1/monitoring/health", headers=headers, timeout=60)
            assert api_drift.status_code == 200 and api_health.status_code == 200
            assert api_drift.json() == page_drift
            assert _without_time(api_health.json()) == _without_time(page_health)
            _check_api_against_traffic(svc, page_drift, page_health)

            assert page.get_by_test_id("signed-in-user").inner_text() == f"Signed in as {TECH} (technician)"
            assert page.get_by_test_id("last-updated").inner_text().startswith("Last updated ")
            _check_page_against(page, page_drift, page_health)
            release = httpx.get(f"{origin}/v1/releases/wrist", headers=headers, timeout=60)  # the release panel
            assert release.status_code == 200 and release.json()["verdict"] == "no_canary", release.text
            for task, body in (("wrist", release.json()), ("chest", report.model_dump(mode="json"))):
                verdict = page.get_by_test_id(f"{task}-release-verdict")
                verdict.wait_for(state="visible", timeout=30_000)
                assert verdict.get_attribute("data-verdict") == body["verdict"]
                assert page.get_by_test_id(f"{task}-release-reasons").inner_text().splitlines() == body["reasons"]
            assert report.verdict == "rollback"  # the canary misses disease: the panel says so, with the figures
            for alias in ("production", "canary"):
                figures = getattr(report, alias)
                rate = figures.sensitivity
                interval = f"95% CI {fmt_rate(rate.low)}–{fmt_rate(rate.high)}"
                assert page.get_by_test_id(f"chest-release-{alias}-sensitivity").inner_text() == (
                    f"{fmt_rate(rate.value)} ({rate.hits}/{rate.total}; {interval})"
                )
                assert page.get_by_test_id(f"chest-release-{alias}-latency").inner_text() == fmt_ms(
                    figures.latency_ms_p95
                )
            assert "of 12 shadowed films" in page.get_by_test_id("chest-release-agreement").inner_text()
            assert page.get_by_test_id("chest-drift-badge").get_attribute("data-state") == "drift"
            assert page.get_by_test_id("chest-pvalue-features").get_attribute("data-flagged") == "true"
            assert page.get_by_test_id("wrist-drift-badge").inner_text() == "Drift check unavailable"

            ARTIFACT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACT), full_page=True)
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            print(f"dashboard screenshot: {ARTIFACT} (and {tmp_path / 'dashboard.png'})")

            # "refresh now" fetches again and redraws the same figures
            with page.expect_response(lambda r: "/v1/monitoring/health" in r.url):
                page.get_by_test_id("refresh-now").click()
            page.wait_for_function(
                "stamp => document.body.dataset.loaded && document.body.dataset.loaded !== stamp",
                arg=page.evaluate("document.body.dataset.loaded"),
            )
            assert page.get_by_test_id("chest-window-images").inner_text() == str(
                page_drift["tasks"]["chest"]["status"]["window_images"]
            )

            # a token the server refuses: back to the sign-in form, with a message, and no figures left
            page.evaluate(f"sessionStorage.setItem('{TOKEN_KEY}', 'not-a-valid-token')")
            page.get_by_test_id("refresh-now").click()
            message.wait_for(state="visible")
            assert "sign in again" in message.inner_text()
            assert page.get_by_test_id("signin-form").is_visible()
            assert page.get_by_test_id("chest-window-images").count() == 0
            assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None

            # sign in again, then sign out
            page.get_by_test_id("username").fill(TECH)
            page.get_by_test_id("password").fill(PASSWORD)
            page.get_by_test_id("signin-submit").click()
            page.wait_for_selector("body[data-loaded]", timeout=60_000)

            # "run drift check" checks the windows now: one more stored chest check (wrist has no profile)
            checks = len(page_drift["tasks"]["chest"]["history"])
            with page.expect_response(lambda r: "/v1/monitoring/drift" in r.url and "refresh=true" in r.url):
                page.get_by_test_id("check-drift-now").click()
            history = page.get_by_test_id("chest-pvalue-history")
            page.wait_for_function(
                f"() => document.querySelector('[data-testid=chest-pvalue-history]')?.dataset.checks === '{checks + 1}'"
            )
            assert page.get_by_test_id("wrist-pvalue-history").get_attribute("data-checks") == "0"
            assert history.locator("g.chart-series").count() > 0

            page.get_by_test_id("sign-out").click()
            page.get_by_test_id("signin-form").wait_for(state="visible")
            assert page.get_by_test_id("chest-window-images").count() == 0
            assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None

            # nothing but the service itself was asked for anything
            assert page_errors == []
            foreign = [u for u in requests if not (u.startswith(f"{origin}/") or u.startswith("data:"))]
            assert foreign == [], foreign
            paths = {re.sub(r"\?.*", "", u.removeprefix(origin)) for u in requests}
            assert {"/dashboard", "/dashboard/assets/dashboard.css", "/dashboard/assets/charts.js",
                    "/dashboard/assets/dashboard.js", "/v1/auth/token"} <= paths  # fmt: skip
        finally:
            browser.close()

"""``care-companion serve`` as a real process: it loads a bundle, answers over HTTP and stops cleanly."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from care_companion.config import Settings
from care_companion.records.db import upgrade
from care_companion.workflows.demo import write_examples
from tests.conftest import write_bundle
from tests.helpers import user_token
from tests.processes import free_port

pytestmark = pytest.mark.integration


def _png(seed: int) -> bytes:
    pixels = (np.random.default_rng(seed).random((200, 180)) * 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


CLI = Path(sys.executable).with_name("care-companion")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARE_", "MLFLOW_"))}
    return env | {"CARE_DATA_DIR": str(tmp_path / "care-data"), "CARE_MODEL_POLL_SECONDS": "0"}


def test_serve_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "bundle")
    done = subprocess.run(
        [str(CLI), "serve", "--chest-model", str(bundle), "--port", str(free_port())],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "not migrated" in done.stdout + done.stderr and "db upgrade" in done.stdout + done.stderr


def test_serve_command_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "bundle", logits=[0.0, 2.0, 0.0, -2.0])
    port = free_port()
    env = _env(tmp_path)
    settings = Settings(data_dir=tmp_path / "care-data")
    upgrade(settings.db_url)
    login = {"Authorization": f"Bearer {user_token(settings)}"}
    proc = subprocess.Popen(
        [str(CLI), "serve", "--chest-model", str(bundle), "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "service did not become ready within 60 s"
            time.sleep(0.3)
        anonymous = httpx.post(f"{url}/v1/predict/chest", files={"file": ("a.png", _png(1), "image/png")}, timeout=30)
        assert anonymous.status_code == 401 and anonymous.json()["error"] == "unauthorized"
        answer = httpx.post(
            f"{url}/v1/predict/chest", files={"file": ("a.png", _png(1), "image/png")}, headers=login, timeout=30
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["label"] == "pneumonia" and body["decision"]["positive"] is True
        assert body["review_required"] is True and "radiologist" in body["warning"]
        assert answer.headers["x-request-id"] == body["request_id"]
        bad = httpx.post(
            f"{url}/v1/predict/chest", files={"file": ("b.png", _png(2)[:300], "image/png")}, headers=login
        )
        assert bad.status_code == 400 and bad.json()["error"] == "truncated"
        metrics = httpx.get(f"{url}/metrics").text
        assert 'care_predictions_total{decision="positive",label="pneumonia",task="chest"} 1.0' in metrics
        assert 'care_rejected_inputs_total{reason="truncated",task="chest"} 1.0' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            output = proc.communicate(timeout=40)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    # uvicorn shuts down gracefully, then re-raises the signal, so the exit status may say SIGTERM
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "service stopped" in output, output
    assert f"http://127.0.0.1:{port}" in output and "radiologist" in output


def test_demo_examples_are_images_of_each_kind(tmp_path: Path) -> None:
    paths = write_examples(Settings(data_dir=tmp_path))
    assert set(paths) == {"normal", "pneumonia", "tuberculosis", "photo", "wrist_pa", "wrist_lateral"}
    for name, path in paths.items():
        with Image.open(path) as image:
            assert image.size == ((128, 128) if name.startswith("wrist") else (256, 256))

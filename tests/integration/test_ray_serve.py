"""Ray Serve as the scale-out path: ``care-companion serve --ray --replicas 2`` on a local Ray instance serves the
same app from two replica processes; a replica killed under load is replaced, and only the requests that were in
flight on it fail (Ray Serve does not retry a request whose replica died, and a prediction is not safe to
replay: it writes records). Every other request is answered."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from care_companion.config import Settings
from tests.conftest import write_bundle
from tests.helpers import migrated, user_token
from tests.processes import free_port, running, tail, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENTS = 4  # concurrent load threads: at most this many requests are in flight when a replica dies

KILL_ONE_REPLICA = """
import ray
ray.init(address="auto", log_to_driver=False)
names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"])
assert len(names) == 2, names
ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
"""


def _png() -> bytes:
    out = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((96, 80)) * 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def test_two_ray_serve_replicas_serve_and_a_killed_one_is_replaced(tmp_path: Path) -> None:
    settings = migrated(Settings(data_dir=tmp_path / "care-data"))
    bundle = write_bundle(tmp_path / "chest-bundle")
    token = user_token(settings)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARE_", "MLFLOW_", "RAY_"))} | {
        "CARE_DATA_DIR": str(settings.data_dir),
        "CARE_MODELS__chest": str(bundle),
        "CARE_PORT": str(port),
        "CARE_MODEL_POLL_SECONDS": "0",
        "CARE_RAY_REPLICA_CPUS": "0.5",
    }
    cli = [str(Path(sys.executable).with_name("care-companion")), "serve", "--ray", "--replicas", "2"]
    log = tmp_path / "ray-serve.log"
    image, headers = _png(), {"Authorization": f"Bearer {token}"}
    results: list[tuple[float, int, str | None]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                try:
                    r = client.post(
                        f"{url}/v1/predict/chest", files={"file": ("a.png", image, "image/png")}, headers=headers
                    )
                    results.append((time.monotonic(), r.status_code, r.headers.get("x-care-replica")))
                except httpx.TransportError:
                    results.append((time.monotonic(), -1, None))

    with running(cli, log=log, ready_url=f"{url}/ready", what="serve --ray", timeout=180, env=env) as proc:
        threads = [threading.Thread(target=load) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        try:
            wait_for(
                "both replicas answering",
                lambda: len({r[2] for r in results if r[1] == 200}) >= 2,
                60,
                lambda: tail(log),
            )
            before = {r[2] for r in results if r[1] == 200}
            killed_at = time.monotonic()
            subprocess.run([sys.executable, "-c", KILL_ONE_REPLICA], env=env, check=True, timeout=60)
            replaced = lambda: {r[2] for r in results if r[1] == 200 and r[0] > killed_at} - before  # noqa: E731
            wait_for("a new replica answering", replaced, 90, lambda: tail(log))
            time.sleep(2)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        assert proc.poll() is None, tail(log)
    outcomes = Counter(status for _, status, _ in results)
    failed = [(at - killed_at, status) for at, status, _ in results if status != 200]
    print(f"ray serve: outcomes {dict(outcomes)}; failed (seconds after the kill, status) {failed}")
    assert outcomes[200] > 50 and len(before) == 2, outcomes
    # only requests in flight on the killed replica fail, right when it dies; every other request is answered
    assert len(failed) <= CLIENTS and all(0 <= after < 5 for after, _ in failed), failed
    assert proc.returncode == 0, tail(log)  # stopped by SIGTERM: a clean shutdown

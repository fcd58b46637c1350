"""Plumbing of ``benchmarks.serve_load``: an async HTTP load generator, a watched server process, the naive app.

The load generator runs in its own process (``python -m benchmarks.loadgen ...``) so that its event loop does not
share a GIL with the orchestrator that samples the server's CPU and memory. It prints ``measuring`` when the warm-up
ends and ``done`` when the measured window ends, then writes its figures as JSON.

``naive_app`` is the design the service is compared with: one ``async def`` FastAPI handler that decodes the upload
and runs the eager PyTorch model on it inline, one image per forward pass, no batching and no worker threads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import psutil
from fastapi import FastAPI, File, UploadFile

NAIVE_BUNDLE_ENV = "CARE_NAIVE_BUNDLE"


# --------------------------------------------------------------------------------------------------- naive design
def naive_app() -> FastAPI:
    """The naive service (uvicorn ``--factory``): eager PyTorch per request inside an ``async def`` handler.

    The bundle folder comes from the ``CARE_NAIVE_BUNDLE`` environment variable; its ``model.pt`` is loaded into the
    classifier the bundle names. Decoding and preprocessing are the service's own functions, so only the serving
    design differs.
    """
    import torch

    from care_companion.imaging.decode import decode_image
    from care_companion.imaging.preprocess import to_model_input
    from care_companion.models.bundle import CHECKPOINT_FILE, load_meta
    from care_companion.models.factory import create_classifier
    from care_companion.models.predictor import softmax

    bundle = Path(os.environ[NAIVE_BUNDLE_ENV])
    meta = load_meta(bundle)
    model, _ = create_classifier(meta.backbone, len(meta.classes))
    model.load_state_dict(torch.load(bundle / CHECKPOINT_FILE, map_location="cpu", weights_only=True))
    model.eval()
    app = FastAPI(title="naive chest service")

    @app.get("/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/predict")
    async def predict(file: Annotated[UploadFile, File()]) -> dict[str, Any]:
        data = await file.read()
        image = decode_image(data, name=file.filename or "file")
        batch = to_model_input([image], meta.input_size, meta.normalisation.mean, meta.normalisation.std)
        with torch.inference_mode():
            logits = model(torch.from_numpy(batch)).numpy()
        probs = softmax(logits, meta.temperature)[0]
        return {"probabilities": {c: float(p) for c, p in zip(meta.classes, probs, strict=True)}}

    return app


# --------------------------------------------------------------------------------------------------- load generator
@dataclass
class LoadResult:
    """What one load run measured (only requests that started inside the measured window)."""

    concurrency: int
    duration_s: float
    completed: int = 0
    ok: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Throughput, latency percentiles and error counts."""
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "concurrency": self.concurrency,
            "duration_s": round(self.duration_s, 2),
            "requests": self.completed,
            "ok": self.ok,
            "errors": self.completed - self.ok,
            "statuses": self.statuses,
            "error_samples": self.error_samples,
            "throughput_rps": self.ok / self.duration_s if self.duration_s else 0.0,
            "latency_ms": {
                "mean": float(lat.mean()),
                "p50": float(np.percentile(lat, 50)),
                "p95": float(np.percentile(lat, 95)),
                "p99": float(np.percentile(lat, 99)),
                "max": float(lat.max()),
            },
        }


async def drive(
    url: str,
    payloads: list[tuple[str, bytes]],
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    seed: int = 0,
    credential: str | None = None,
) -> LoadResult:
    """``concurrency`` clients each POST a random image (multipart ``file``) in a loop, one request at a time,
    sending ``Authorization: Bearer <credential>`` when one is given.

    Requests started during the first ``warmup`` seconds are not counted; clients stop starting new ones after
    ``warmup + duration`` seconds. Every non-200 answer or transport failure counts as an error.
    """
    import aiohttp

    result = LoadResult(concurrency=concurrency, duration_s=duration)
    statuses: Counter[str] = Counter()
    rng = random.Random(seed)
    begin = time.perf_counter()
    window_start, window_end = begin + warmup, begin + warmup + duration
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}

    async def client(session: aiohttp.ClientSession) -> None:
        while (started := time.perf_counter()) < window_end:
            name, data = rng.choice(payloads)
            form = aiohttp.FormData()
            form.add_field("file", data, filename=name, content_type="image/jpeg")
            try:
                async with session.post(url, data=form, headers=headers) as response:
                    body = await response.read()
                    status = str(response.status)
            except Exception as exc:  # transport failure: counted as an error, the client goes on
                body, status = repr(exc).encode(), f"exception:{type(exc).__name__}"
            if started < window_start:
                continue
            elapsed_ms = (time.perf_counter() - started) * 1000
            result.completed += 1
            statuses[status] += 1
            if status == "200":
                result.ok += 1
                result.latencies_ms.append(elapsed_ms)
            elif len(result.error_samples) < 5:
                result.error_samples.append(f"{status}: {body[:200].decode(errors='replace')}")

    async def announce() -> None:
        await asyncio.sleep(warmup)
        print("measuring", flush=True)
        await asyncio.sleep(duration)
        print("done", flush=True)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(announce(), *(client(session) for _ in range(concurrency)))
    result.statuses = dict(statuses)
    return result


def main() -> None:
    """Command line of the load-generator process."""
    parser = argparse.ArgumentParser(description="Drive one endpoint with concurrent clients; print JSON figures.")
    parser.add_argument("--url", required=True)
    parser.add_argument("--paths", type=Path, required=True, help="file listing one image path per line")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--credential-file", type=Path, help="file holding an API key or token to send")
    args = parser.parse_args()
    credential = args.credential_file.read_text().strip() if args.credential_file else None
    paths = [Path(p) for p in args.paths.read_text().splitlines() if p.strip()]
    payloads = [(p.name, p.read_bytes()) for p in paths]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(
        drive(
            args.url,
            payloads,
            concurrency=args.concurrency,
            duration=args.duration,
            warmup=args.warmup,
            credential=credential,
        )
    )
    args.out.write_text(json.dumps(result.summary() | {"latencies_ms": result.latencies_ms}))


# --------------------------------------------------------------------------------------------------- server process
def _tree(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU seconds of a process and its live children."""
    total = 0.0
    for p in _tree(process):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def tree_rss(process: psutil.Process) -> int:
    """Resident memory in bytes of a process and its live children."""
    total = 0
    for p in _tree(process):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


class Server:
    """A uvicorn server in a subprocess, with its peak RSS sampled every ``interval`` seconds.

    Args:
        app: the ``module:factory`` uvicorn loads with ``--factory`` (a label when ``command`` is given).
        port: loopback port.
        env: extra environment variables.
        log: where the server's output goes.
    """

    def __init__(
        self,
        app: str,
        port: int,
        env: dict[str, str],
        log: Path,
        *,
        interval: float = 0.2,
        command: list[str] | None = None,
    ) -> None:
        self.app, self.port, self.env, self.log, self.interval = app, port, env, log, interval
        self.command = command  # instead of uvicorn (e.g. ``care-companion serve --ray``); must listen on ``port``
        self.base = f"http://127.0.0.1:{port}"
        self.peak_rss = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    @property
    def process(self) -> psutil.Process:
        """The server's psutil handle."""
        assert self._proc is not None
        return psutil.Process(self._proc.pid)

    def __enter__(self) -> Server:
        cmd = [sys.executable, "-m", "uvicorn", self.app, "--factory", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--log-level", "warning", "--no-access-log"]
        cmd = self.command or cmd
        with self.log.open("wb") as out:
            self._proc = subprocess.Popen(cmd, env=os.environ | self.env, stdout=out, stderr=subprocess.STDOUT)
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 180.0) -> None:
        import httpx

        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.app} exited with {self._proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.app} not ready after {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def _sample(self) -> None:
        while not self._stop.is_set():
            if self._proc is not None:
                self.peak_rss = max(self.peak_rss, tree_rss(psutil.Process(self._proc.pid)))
            self._stop.wait(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def run_load(
    server: Server,
    path: str,
    paths_file: Path,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    out: Path,
    on_window: Any = None,
    credential_file: Path | None = None,
) -> dict[str, Any]:
    """Drive ``server`` with a load-generator process; sample server CPU over the measured window.

    ``on_window(phase)`` is called with "start" and "end" when the measured window opens and closes (e.g. to read
    the server's metrics).
    """
    cmd = [sys.executable, "-m", "benchmarks.loadgen", "--url", server.base + path, "--paths", str(paths_file)]
    cmd += ["--concurrency", str(concurrency), "--duration", str(duration), "--warmup", str(warmup), "--out", str(out)]
    if credential_file is not None:
        cmd += ["--credential-file", str(credential_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    client = psutil.Process(proc.pid)
    marks: dict[str, tuple[float, float, float, float]] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        phase = {"measuring": "start", "done": "end"}.get(line.strip())
        if phase is None:
            continue
        now = time.perf_counter()
        marks[phase] = (now, tree_cpu_seconds(server.process), tree_cpu_seconds(client), psutil.cpu_percent())
        if on_window is not None:
            on_window(phase)
    if proc.wait() != 0 or len(marks) != 2:
        raise RuntimeError(f"load generator failed (exit {proc.returncode})")
    figures: dict[str, Any] = json.loads(out.read_text())
    wall = marks["end"][0] - marks["start"][0]
    server_cpu = marks["end"][1] - marks["start"][1]
    figures["server_cpu_s"] = server_cpu
    figures["server_cpu_percent"] = 100 * server_cpu / wall
    figures["client_cpu_percent"] = 100 * (marks["end"][2] - marks["start"][2]) / wall
    figures["machine_cpu_percent"] = marks["end"][3]  # every core of the machine, averaged over the window
    cores = psutil.cpu_count() or 1
    figures["other_cpu_percent"] = max(
        0.0, figures["machine_cpu_percent"] * cores - figures["server_cpu_percent"] - figures["client_cpu_percent"]
    )  # everything else on the machine, in percent of one core
    figures["peak_rss_mb"] = server.peak_rss / 2**20
    figures["server_cpu_ms_per_image"] = 1000 * server_cpu / figures["ok"] if figures["ok"] else None
    return figures


if __name__ == "__main__":
    main()

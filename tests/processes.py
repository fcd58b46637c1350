"""Helpers for tests that start real processes (the service, Prometheus, a private PostgreSQL)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float, logs: Callable[[], str], every: float = 0.3) -> Any:
    """Poll ``check`` until it returns something truthy (connection errors count as not yet); fail with
    ``what`` and the processes' logs after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except httpx.TransportError:
            found = None
        if found:
            return found
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s\n{logs()}"
        time.sleep(every)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process the test started (by its PID): SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def tail(path: Path, chars: int = 4000) -> str:
    """The end of a log file ('' when it does not exist)."""
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@contextmanager
def running(
    args: list[str],
    *,
    log: Path,
    ready_url: str,
    what: str,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``args`` (output to ``log``), wait until ``ready_url`` answers 200, and stop the process (by its PID)
    on the way out; fail with the log when it exits or does not become ready within ``timeout`` seconds."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=out, cwd=cwd)
    try:

        def ready() -> bool:
            assert proc.poll() is None, f"{what} exited with {proc.returncode}\n{tail(log)}"
            return httpx.get(ready_url, timeout=2).status_code == 200

        wait_for(f"{what} did not become ready", ready, timeout, lambda: tail(log))
        yield proc
    finally:
        stop_process(proc)


def service_env(data_dir: Path, port: int, **settings: str) -> dict[str, str]:
    """The environment of a ``care-companion serve`` subprocess: this one without any ``CARE_``/``MLFLOW_``
    variable, then the data dir, the port, no registry polling or orphan sweeps, and ``settings`` (as
    ``CARE_<NAME>``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARE_", "MLFLOW_"))}
    base = {"data_dir": str(data_dir), "port": str(port), "model_poll_seconds": "0", "orphan_sweep_seconds": "0"}
    return env | {f"CARE_{name.upper()}": value for name, value in (base | settings).items()}

"""Ray Serve against the single-process service, in one run: the same app, bundle, images and load.

1. The service as one uvicorn process (``care-companion serve``'s app), driven by the load-generator process.
2. The same app as a Ray Serve deployment of ``--replicas`` replicas on a local Ray instance
   (``care-companion serve --ray``), behind Serve's HTTP proxy, driven the same way.

The windows alternate (``--rounds``), so machine noise hits both alike. On a two-core machine no speed-up is
expected (the replicas share the same two cores, and the proxy is one more hop): the point is that the
scale-out path works, and what its proxy costs. Real chest X-rays from ../shared/data/cxr-real.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import SHARED_DATA, write_result
from benchmarks.loadgen import Server, run_load
from benchmarks.serve_load import build_random_bundle, pick_images, service_credential
from care_companion.tasks import CHEST


def _cli() -> str:
    return str(Path(sys.executable).with_name("care-companion"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per window")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before each window")
    parser.add_argument("--rounds", type=int, default=2, help="windows per design, alternating")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--port", type=int, default=8741, help="the single process's port; Ray Serve uses the next")
    parser.add_argument("--images", type=int, default=200, help="most real X-rays loaded from cxr-real")
    args = parser.parse_args()
    source = SHARED_DATA / "cxr-real"
    if not source.is_dir():
        print(f"skipped: real data not found at {source}")
        return
    with tempfile.TemporaryDirectory(prefix="ray-serve-") as tmp:
        run(args, source, Path(tmp))


def run(args: argparse.Namespace, source: Path, work: Path) -> None:
    """Both designs under the same load; the results and the docs/BENCHMARKS.md section."""
    bundle = build_random_bundle(work / "bundle")
    paths_file = work / "images.txt"
    paths_file.write_text("\n".join(str(p) for p in pick_images(source, args.images)))
    credential = service_credential(work)
    env = {"CARE_CHEST_MODEL": str(bundle), "CARE_DATA_DIR": str(work / "care-data"), "CARE_MODEL_POLL_SECONDS": "0"}
    ray_port = args.port + 1
    ray_env = env | {"CARE_PORT": str(ray_port), "CARE_RAY_REPLICA_CPUS": str(1 / args.replicas)}
    ray_cmd = [_cli(), "serve", "--ray", "--replicas", str(args.replicas)]
    windows: dict[str, list[dict[str, Any]]] = {"single": [], "ray": []}

    def measure(server: Server, name: str, index: int) -> None:
        figures = run_load(
            server,
            "/v1/predict/chest",
            paths_file,
            concurrency=args.concurrency,
            duration=args.duration,
            warmup=args.warmup,
            out=work / f"{name}-{index}.json",
            credential_file=credential,
        )
        figures.pop("latencies_ms", None)
        windows[name].append(figures)
        rate, errors = figures["throughput_rps"], figures["errors"]
        print(f"{name} window {index + 1}: {rate:.1f} req/s, {errors} errors", flush=True)

    with (
        Server("care_companion.serving.app:create_app", args.port, env, work / "single.log") as single,
        Server("serve --ray", ray_port, ray_env, work / "ray.log", command=ray_cmd) as ray,
    ):
        for index in range(args.rounds):
            measure(single, "single", index)
            measure(ray, "ray", index)

    def total(name: str) -> dict[str, Any]:
        parts = windows[name]
        seconds = sum(w["duration_s"] for w in parts)
        return {
            "throughput_rps": sum(w["ok"] for w in parts) / seconds,
            "errors": sum(w["errors"] for w in parts),
            "requests": sum(w["requests"] for w in parts),
            "p50_ms": max(w["latency_ms"]["p50"] for w in parts),
            "p95_ms": max(w["latency_ms"]["p95"] for w in parts),
            "server_cpu_percent": sum(w["server_cpu_percent"] for w in parts) / len(parts),
            "peak_rss_mb": max(w["peak_rss_mb"] for w in parts),
        }

    single_total, ray_total = total("single"), total("ray")
    ratio = ray_total["throughput_rps"] / single_total["throughput_rps"] if single_total["throughput_rps"] else 0.0
    result = {"single": single_total, "ray": ray_total, "ray_vs_single": ratio, "windows": windows}
    command = "python -m benchmarks.ray_serve"

    def row(name: str, f: dict[str, Any]) -> str:
        return (
            f"| {name} | {f['throughput_rps']:.1f} | {f['errors']} of {f['requests']} | {f['p50_ms']:.0f} | "
            f"{f['p95_ms']:.0f} | {f['server_cpu_percent']:.0f}% | {f['peak_rss_mb']:.0f} |"
        )

    markdown = f"""## Ray Serve vs the single-process service

The same random-weight {CHEST.recipe.backbone} {CHEST.recipe.image_size}-px chest bundle, {args.concurrency} clients
posting real chest X-rays, {args.rounds} alternating {args.duration:.0f}-s windows per design (worst window's
percentiles). Ray Serve: {args.replicas} replicas on a local Ray instance behind Serve's HTTP proxy. No speed-up is
expected on two cores; the figures show what the scale-out path costs here.

| design | throughput (req/s) | errors | p50 (ms) | p95 (ms) | server CPU | peak RSS (MB) |
|---|---|---|---|---|---|---|
{row("one uvicorn process", single_total)}
{row(f"Ray Serve, {args.replicas} replicas", ray_total)}

Ray Serve / single process throughput: **{ratio:.2f}x** (one run).
"""
    write_result("ray_serve", result, command=command, markdown=markdown)
    print(markdown)


if __name__ == "__main__":
    main()

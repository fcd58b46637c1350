"""``make bench``: every benchmark in turn; each writes bench-out/<name>.json and its docs/BENCHMARKS.md section."""

from __future__ import annotations

import sys

from benchmarks import (
    chest_recipe,
    dicom_throughput,
    drift_power,
    heatmap_cost,
    int8,
    ray_serve,
    ray_throughput,
    serve_load,
    train_throughput,
    wrist_recipe,
)


def main() -> None:
    for module in (
        train_throughput,
        ray_throughput,
        chest_recipe,
        wrist_recipe,
        int8,
        serve_load,
        ray_serve,
        heatmap_cost,
        dicom_throughput,
        drift_power,
    ):
        print(f"== {module.__name__}", flush=True)
        sys.argv = [module.__name__]
        module.main()


if __name__ == "__main__":
    main()

"""A markdown table of ``scribbleflow bench stream`` summaries, one column per JSON file.

    .venv/bin/python -m clients.stream_table bench-out/stream/residual.json bench-out/stream/random.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clients.stream_metrics import SUMMARY_KEYS

#: Further summary keys worth a row (when present).
EXTRA_KEYS = (
    "errors", "rounds", "mean_rounds_per_volume", "first_rounds_below_opening", "rounds_lowering_dice",
    "mean_stroke_voxel_ratio", "suggestion_error_voxels_mean",
    "random_slice_error_voxels_mean", "round_latency_with_job_p50_s", "round_latency_with_job_p95_s",
    "round_latency_without_job_p50_s", "round_latency_without_job_p95_s", "rounds_with_job", "rounds_without_job",
    "gate_errors", "gate_missed_improvements", "model_versions", "online_steps_serving_lineage",
    "mean_opening_dice", "atlas_openings", "openings_with_alternative", "better_opening_shown",
    "mean_better_opening_dice",
)


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def table(reports: list[dict], names: list[str]) -> str:
    lines = ["| | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for key in SUMMARY_KEYS + EXTRA_KEYS:
        values = [r["summary"].get(key) for r in reports]
        if all(v is None for v in values) and key not in SUMMARY_KEYS:
            continue
        lines.append(f"| {key} | " + " | ".join(_cell(v) for v in values) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="bench stream JSON files")
    args = parser.parse_args(argv)
    reports = [json.loads(Path(p).read_text()) for p in args.reports]
    print(table(reports, [Path(p).stem for p in args.reports]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

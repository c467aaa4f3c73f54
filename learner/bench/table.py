"""Markdown table of offline benchmark JSON files (``scribbleflow bench offline``).

    python -m learner.bench.table bench-out/offline/*.json

One row per file, in the order given: method, data, budget, iterations and speed, where
the best validation model was found, test mean Dice with the per-class Dice and HD95, and
the machine's load at start and end.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HEADER = (
    "| method | train data | minutes | iterations | it/s | precision | post-processing | best val at it. "
    "| val mean Dice "
    "| test mean Dice | test Dice per class | test HD95 per class | load start / end |"
)


def _fmt(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def table_row(report: dict) -> str:
    test = report.get("test") or {"mean_dice": None, "per_class": {}}  # no test split: empty cells
    per_class = test["per_class"]
    classes = sorted(per_class, key=int)
    dice = " / ".join(_fmt(per_class[c]["dice"], 3) for c in classes)
    hd95 = " / ".join(_fmt(per_class[c]["hd95"], 1) for c in classes)
    unit = test.get("hd95_unit", "")
    load = report.get("load_average", {})
    train = Path(report["data"]["train"]) if report.get("data") else None
    data = f"{train.parent.name}/{train.name}" if train else "?"
    return (
        f"| {report['method']} | {data} "
        f"| {'—' if report.get('minutes') is None else format(report['minutes'], 'g')} | {report['iterations']} | {report['iterations_per_second']:.2f} "
        f"| {report.get('precision', '?')} | {report.get('postprocess', 'none')} | {report.get('best_iteration', '?')} "
        f"| {_fmt(report['val']['mean_dice'], 3)} | **{_fmt(test['mean_dice'], 3)}** | {dice} "
        f"| {hd95} {unit} | {_fmt(load.get('start'), 1)} / {_fmt(load.get('end'), 1)} |"
    )


def markdown_table(reports: list[dict]) -> str:
    separator = "|" + " --- |" * HEADER.count(" | ") + " --- |"
    return "\n".join([HEADER, separator] + [table_row(r) for r in reports])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="JSON files of `scribbleflow bench offline`")
    args = parser.parse_args(argv)
    print(markdown_table([json.loads(Path(p).read_text()) for p in args.reports]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""PNG plots of a ``scribbleflow bench stream`` report (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

PLOTS = ("dice_per_round", "holdout_per_version", "effort_per_volume", "latency_histogram")


def _save(figure, folder: Path, name: str) -> str:
    path = folder / f"{name}.png"
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return str(path)


def dice_per_round(report: dict, folder: Path) -> str:
    """Dice of each volume's returned segmentation (and of the proxy alone, dashed) per round."""
    figure, axes = plt.subplots(figsize=(7, 4))
    colours = plt.cm.viridis
    volumes = report["volumes"]
    for i, volume in enumerate(volumes):
        colour = colours(i / max(1, len(volumes) - 1))
        numbers = [0] + [r["number"] for r in volume["rounds"]]
        axes.plot(numbers, [volume["opening_dice"]] + [r["dice"] for r in volume["rounds"]], color=colour, lw=1)
        axes.plot([r["number"] for r in volume["rounds"]], [r["proxy_dice"] for r in volume["rounds"]],
                  color=colour, lw=0.8, ls="--")
    axes.axhline(report["options"]["target_dice"], color="grey", lw=0.8, ls=":")
    axes.set(xlabel="round (0 = opening prediction)", ylabel="mean Dice",
             title="Dice per round (solid: returned, dashed: proxy; colour: stream position)")
    return _save(figure, folder, "dice_per_round")


def holdout_per_version(report: dict, folder: Path) -> str:
    """Holdout Dice of every model version; promoted ones filled, rejected ones hollow."""
    figure, axes = plt.subplots(figsize=(7, 4))
    scores = report["holdout"]["versions"]
    promoted = {v["version"]: v["promoted"] for v in report["learning_curve"]["versions"]}
    versions = sorted(int(v) for v in scores)
    dice = [scores[str(v)]["mean_dice"] for v in versions]
    axes.plot(versions, dice, color="tab:blue", lw=1)
    for version, value in zip(versions, dice, strict=True):
        filled = promoted.get(version, True)
        axes.scatter([version], [value], facecolors="tab:blue" if filled else "none", edgecolors="tab:blue")
    offline = report["summary"].get("offline_holdout_dice")
    if offline is not None:
        axes.axhline(offline, color="tab:orange", ls="--", lw=1, label="offline, same labels and steps")
        axes.legend(loc="lower right")
    axes.set(xlabel="model version", ylabel="holdout mean Dice", title="Holdout Dice per model version")
    return _save(figure, folder, "holdout_per_version")


def effort_per_volume(report: dict, folder: Path) -> str:
    """Boundary pixels on the touched slices and stroke voxels, per volume in stream order."""
    figure, axes = plt.subplots(figsize=(7, 4))
    volumes = report["volumes"]
    positions = list(range(1, len(volumes) + 1))
    axes.bar(positions, [v["effort"]["touched_boundary_pixels"] for v in volumes], color="tab:blue",
             label="GT boundary pixels on touched slices")
    axes.plot(positions, [v["effort"]["stroke_voxels"] for v in volumes], color="tab:red", marker="o",
              label="stroke voxels")
    axes.plot(positions, [v["effort"]["full_boundary_pixels"] for v in volumes], color="grey", ls=":",
              label="full annotation (all slices)")
    axes.set(xlabel="volume (stream order)", ylabel="pixels", title="Effort per volume")
    axes.legend(loc="upper right")
    return _save(figure, folder, "effort_per_volume")


def latency_histogram(report: dict, folder: Path) -> str:
    """Client round latency, with and without a training job running."""
    figure, axes = plt.subplots(figsize=(7, 4))
    rounds = [r for v in report["volumes"] for r in v["rounds"] if "latency_s" in r]
    groups = {"training job running": [r["latency_s"] for r in rounds if r.get("job_running")],
              "no job running": [r["latency_s"] for r in rounds if r.get("job_running") is False]}
    top = max([r["latency_s"] for r in rounds], default=1.0)
    bins = [top * i / 30 for i in range(31)]
    for label, values in groups.items():
        if values:
            axes.hist(values, bins=bins, alpha=0.6, label=f"{label} ({len(values)})")
    axes.set(xlabel="round latency (s)", ylabel="rounds", title="Round latency (client)")
    axes.legend(loc="upper right")
    return _save(figure, folder, "latency_histogram")


def write_plots(report: dict, folder: str | Path) -> dict[str, str]:
    """All four plots under ``folder``; their paths by name."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in PLOTS:
        if name == "holdout_per_version" and not report["holdout"]["versions"]:
            continue  # a --url run without access to the registry
        paths[name] = globals()[name](report, target)
    return paths

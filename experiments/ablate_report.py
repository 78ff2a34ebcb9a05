"""The report of ``python -m experiments.ablate``: ``results.md`` and the PNG plots, from ``results.json``.

Everything here is a pure function of the results file, so ``python -m experiments.ablate --report-only``
redraws it without training. Per configuration, AP is given as the mean over
seeds ± half the range (max - min) / 2, beside each seed's value; with two
seeds the half-range is the distance of either seed from the mean.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

from atss_detector.evaluation import METRICS

from .ablate_grid import TABLES, Setting

RESULTS_MD = "results.md"
PLOTS = {
    "table2": "table2_assignment_vs_regression.png",
    "table4": "table4_ap_vs_k.png",
    "table7": "table7_anchors.png",
}

# The paper's COCO minival AP (%) for the same rows (ResNet-50, 1x schedule, 800 px):
# Table 2 (RetinaNet #A=1 with FCOS's improvements: IoU rule vs spatial and scale
# constraint, box vs point), Table 4 (ATSS's k), Table 7 (3 scales x 3 ratios with
# the improvements, without and with ATSS, against #A=1). None: no such row.
PAPER_AP: Dict[str, float] = {
    "max_iou-box-k9-A1": 37.0,
    "max_iou-point-k9-A1": 36.9,
    "fcos-box-k9-A1": 37.8,
    "fcos-point-k9-A1": 37.8,
    "atss-box-k3-A1": 38.0,
    "atss-box-k5-A1": 38.8,
    "atss-box-k9-A1": 39.3,
    "atss-box-k13-A1": 39.0,
    "atss-box-k19-A1": 38.7,
    "max_iou-box-k9-A9": 38.4,
    "atss-box-k9-A9": 39.2,
}


def runs_of(results: Dict[str, Any], setting: Setting) -> List[Dict[str, Any]]:
    """The records of ``setting``, by seed."""
    runs = [r for r in results["runs"] if r["config"]["name"] == setting.name]
    return sorted(runs, key=lambda r: r["config"]["seed"])


def summary(values: Sequence[float]) -> Optional[Dict[str, float]]:
    """``{"mean", "half_range", "min", "max"}`` of ``values`` (None when empty)."""
    if not values:
        return None
    low, high = min(values), max(values)
    return {"mean": sum(values) / len(values), "half_range": (high - low) / 2, "min": low, "max": high}


def _pct(value: float) -> str:
    return f"{100 * value:.1f}" if value >= 0 else "n/a"


def _row(results: Dict[str, Any], setting: Setting, first: List[str]) -> str:
    runs = runs_of(results, setting)
    ap = summary([r["AP"] for r in runs])
    cells = list(first)
    if ap is None:
        cells += ["not run"] + [""] * (len(METRICS) + 1)
    else:
        cells.append(f"**{_pct(ap['mean'])}** ± {100 * ap['half_range']:.1f}")
        cells.append(", ".join(f"{_pct(r['AP'])} (s{r['config']['seed']})" for r in runs))
        for metric in METRICS[1:]:
            values = [r[metric] for r in runs if r[metric] >= 0]
            cells.append(_pct(sum(values) / len(values)) if values else "n/a")
        cells.append(f"{sum(r['train_seconds'] for r in runs) / len(runs) / 60:.1f}")
    paper = PAPER_AP.get(setting.name)
    cells.append(f"{paper:.1f}" if paper is not None else "–")
    return "| " + " | ".join(cells) + " |"


def _table(results: Dict[str, Any], table: str, columns: List[str], first_cells) -> List[str]:
    header = columns + ["AP (mean ± half-range)", "AP per seed"] + list(METRICS[1:]) + ["train min", "paper AP"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += [_row(results, s, first_cells(s)) for s in TABLES[table]]
    return lines


def _mean_ap(results: Dict[str, Any], setting: Setting) -> Optional[float]:
    ap = summary([r["AP"] for r in runs_of(results, setting)])
    return None if ap is None else 100 * ap["mean"]


def effects(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Each claim's effects in AP points (differences of means over seeds), beside the seed spread.

    Returns ``[{"table", "effect", "ours", "paper"}]``; ``ours`` is None where a
    configuration has not run yet. The last entries are the seed spread: the mean
    and the largest half-range (max - min) / 2 over the configurations.
    """

    def diff(a: Setting, b: Setting) -> Optional[float]:
        x, y = _mean_ap(results, a), _mean_ap(results, b)
        return None if x is None or y is None else x - y

    def paper(a: Setting, b: Setting) -> Optional[float]:
        x, y = PAPER_AP.get(a.name), PAPER_AP.get(b.name)
        return None if x is None or y is None else x - y

    rows = []

    def add(table: str, effect: str, a: Setting, b: Setting) -> None:
        rows.append({"table": table, "effect": effect, "ours": diff(a, b), "paper": paper(a, b)})

    for regression in ("box", "point"):
        add("2", f"fcos - max_iou ({regression})", Setting("fcos", regression), Setting("max_iou", regression))
        add("2", f"atss - max_iou ({regression})", Setting("atss", regression), Setting("max_iou", regression))
    for assigner in ("max_iou", "fcos", "atss"):
        add("2", f"point - box ({assigner})", Setting(assigner, "point"), Setting(assigner, "box"))
    k_means = [(s.topk, _mean_ap(results, s)) for s in TABLES["table4"]]
    k_means = [(k, m) for k, m in k_means if m is not None]
    k_paper = [PAPER_AP[s.name] for s in TABLES["table4"] if s.name in PAPER_AP]
    if k_means:
        best, worst = max(k_means, key=lambda x: x[1]), min(k_means, key=lambda x: x[1])
        rows.append(
            {
                "table": "4",
                "effect": f"best k - worst k (k={best[0]} vs k={worst[0]})",
                "ours": best[1] - worst[1],
                "paper": max(k_paper) - min(k_paper) if k_paper else None,
            }
        )
    for assigner in ("max_iou", "atss"):
        add("7", f"#A=9 - #A=1 ({assigner})", Setting(assigner, "box", 9, 9), Setting(assigner, "box", 9, 1))
    settings = {x for t in TABLES.values() for x in t}
    seeded = [[100 * r["AP"] for r in runs_of(results, s)] for s in settings]
    spreads = [summary(aps)["half_range"] for aps in seeded if len(aps) >= 2]  # one seed: no spread yet
    if spreads:
        rows.append({"table": "all", "effect": "seed spread: mean half-range", "ours": sum(spreads) / len(spreads)})
        rows.append({"table": "all", "effect": "seed spread: largest half-range", "ours": max(spreads)})
    return rows


def _effects_table(results: Dict[str, Any]) -> List[str]:
    lines = ["| table | effect (AP points) | ours | paper |", "| --- | --- | --- | --- |"]
    for row in effects(results):
        ours = "not run" if row["ours"] is None else f"{row['ours']:+.1f}"
        if row["table"] == "all":
            ours = ours.lstrip("+")
        theirs = "–" if row.get("paper") is None else f"{row['paper']:+.1f}"
        lines.append(f"| {row['table']} | {row['effect']} | {ours} | {theirs} |")
    return lines


def markdown(results: Dict[str, Any]) -> str:
    """``results.md``: the three tables, the plots, what was run."""
    runs = results["runs"]
    seeds = sorted({r["config"]["seed"] for r in runs})
    wall = sum(r.get("wall_seconds", 0.0) for r in runs)
    base = results.get("base_config", {})
    data = base.get("data", {}).get("data", "?")
    lines = [
        "# ATSS ablations on the bundled detector",
        "",
        f"Generated by `python -m experiments.ablate` from `results.json` ({len(runs)} runs, seeds "
        f"{', '.join(map(str, seeds))}; preset `{results.get('preset', '?')}`, data `{data}`; "
        f"{wall / 60:.0f} min of run time in all). AP in %, COCO metrics (pycocotools) on the val split; "
        "the other metrics are means over seeds; `train min`: mean training minutes per run. "
        "The paper's AP is COCO minival with ResNet-50 (not comparable in level, only in direction).",
        "",
        "## Table 2: assignment rule vs regression starting point (#A = 1, k = 9)",
        "",
        *_table(results, "table2", ["assigner", "regression"], lambda s: [f"`{s.assigner}`", s.regression]),
        "",
        f"![Table 2]({PLOTS['table2']})",
        "",
        "## Table 4: ATSS's k (box regression, #A = 1)",
        "",
        *_table(results, "table4", ["k"], lambda s: [str(s.topk)]),
        "",
        f"![Table 4]({PLOTS['table4']})",
        "",
        "## Table 7: anchors per location (box regression, k = 9: 9 x #A candidates per level for ATSS)",
        "",
        *_table(results, "table7", ["assigner", "#A"], lambda s: [f"`{s.assigner}`", str(s.anchors_per_location)]),
        "",
        f"![Table 7]({PLOTS['table7']})",
        "",
        "## The effects beside the seed spread",
        "",
        "Differences of the means over seeds, in AP points; the seed spread is the half-range "
        "(max - min) / 2 of each configuration's seeds.",
        "",
        *_effects_table(results),
        "",
    ]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bars(results: Dict[str, Any], groups, path: str, title: str, xlabel: str) -> None:
    """Grouped bars: mean AP per (group, member), error bars from min to max, each seed a dot.

    ``groups``: ``[(group label, [(member label, Setting)])]``.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    members = [m for m, _ in groups[0][1]]
    width = 0.8 / len(members)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, member in enumerate(members):
        labelled = False
        for i, (_, settings) in enumerate(groups):
            runs = runs_of(results, dict(settings)[member])
            x = i + (j - (len(members) - 1) / 2) * width
            ap = summary([100 * r["AP"] for r in runs])
            if ap is None:
                continue
            ax.bar(
                x,
                ap["mean"],
                width * 0.9,
                color=colours[j],
                label=None if labelled else member,
                yerr=[[ap["mean"] - ap["min"]], [ap["max"] - ap["mean"]]],
                capsize=4,
            )
            labelled = True
            ax.scatter([x] * len(runs), [100 * r["AP"] for r in runs], color="black", s=12, zorder=3)
    ax.set_xticks(range(len(groups)), [g for g, _ in groups])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("AP (%)")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ap_vs_k(results: Dict[str, Any], path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ks, means = [], []
    by_seed: Dict[int, List] = {}
    for setting in TABLES["table4"]:
        runs = runs_of(results, setting)
        for r in runs:
            by_seed.setdefault(r["config"]["seed"], []).append((setting.topk, 100 * r["AP"]))
        if runs:
            ks.append(setting.topk)
            means.append(100 * sum(r["AP"] for r in runs) / len(runs))
    for seed, points in sorted(by_seed.items()):
        ax.plot(*zip(*points), "o", alpha=0.7, label=f"seed {seed}")
    if ks:
        ax.plot(ks, means, "-", color="black", label="mean")
    paper = [(s.topk, PAPER_AP[s.name]) for s in TABLES["table4"] if s.name in PAPER_AP]
    ax.set_xticks([s.topk for s in TABLES["table4"]])
    ax.set_xlabel("k (candidates per level per object)")
    ax.set_ylabel("AP (%)")
    ax.set_title("Table 4: ATSS's sensitivity to k")
    ax.grid(alpha=0.3)
    if paper:
        twin = ax.twinx()
        twin.plot(*zip(*paper), "--", color="grey", label="paper (COCO, right axis)")
        twin.set_ylabel("paper AP (%)", color="grey")
        twin.legend(loc="lower center")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(results: Dict[str, Any], output_dir: str) -> None:
    table2 = [(a, [(r, Setting(a, r)) for r in ("box", "point")]) for a in ("max_iou", "fcos", "atss")]
    _bars(
        results,
        table2,
        os.path.join(output_dir, PLOTS["table2"]),
        "Table 2: assignment vs regression (#A=1, k=9)",
        "assigner",
    )
    _ap_vs_k(results, os.path.join(output_dir, PLOTS["table4"]))
    table7 = [(a, [(f"#A={n}", Setting(a, "box", 9, n)) for n in (1, 9)]) for a in ("max_iou", "atss")]
    _bars(results, table7, os.path.join(output_dir, PLOTS["table7"]), "Table 7: anchors per location", "assigner")


def write_report(results: Dict[str, Any], output_dir: str) -> None:
    """``results.md`` and the three PNGs in ``output_dir``."""
    os.makedirs(output_dir, exist_ok=True)
    tmp = os.path.join(output_dir, RESULTS_MD + ".tmp")
    with open(tmp, "w") as f:
        f.write(markdown(results))
    os.replace(tmp, os.path.join(output_dir, RESULTS_MD))
    write_plots(results, output_dir)

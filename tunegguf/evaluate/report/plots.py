"""The report's figures as inline base64 PNGs (matplotlib Figure objects on the Agg canvas).

Figures are built without pyplot, so nothing global (backend, open windows) changes in
the caller's process.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np


def _png(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def confusion_matrices(report: dict[str, Any], mode: str) -> str | None:
    """One heat map per model, side by side, same colour scale (row counts)."""
    panels = [(name, m["metrics"][mode]) for name, m in report["models"].items() if mode in (m.get("metrics") or {})]
    if not panels:
        return None
    fig = _figure(2.9 * len(panels) + 0.4, 3.0)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    top = max(max(max(row) for row in m["confusion_matrix"]["rows_true_cols_pred"]) for _, m in panels) or 1
    for ax, (name, metrics) in zip(axes, panels):
        matrix = np.array(metrics["confusion_matrix"]["rows_true_cols_pred"])
        names = metrics["confusion_matrix"]["labels"]
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=top)
        for (r, c), count in np.ndenumerate(matrix):
            ax.text(c, r, str(count), ha="center", va="center", color="white" if count > top / 2 else "black")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_title(f"{name}\nacc {metrics['accuracy']:.1%}", fontsize=10)
    axes[0].set_ylabel("true")
    return _png(fig)


def probability_scatter(report: dict[str, Any], predictions: list[dict[str, Any]]) -> str | None:
    """HF vs GGUF probability of the last label per row; flipped rows in red."""
    labels = report["labels"]
    target = labels[-1]
    by_model: dict[str, dict[str, dict]] = {}
    for row in predictions:
        if "probs" in row:
            by_model.setdefault(row["model"], {})[row["id"]] = row
    hf = by_model.get("hf")
    ggufs = [name for name in report["parity"] if name in by_model]
    if not hf or not ggufs:
        return None
    fig = _figure(3.2 * len(ggufs) + 0.4, 3.3)
    axes = np.atleast_1d(fig.subplots(1, len(ggufs)))
    for ax, name in zip(axes, ggufs):
        ids = [i for i in hf if i in by_model[name]]
        x = np.array([hf[i]["probs"][target] for i in ids])
        y = np.array([by_model[name][i]["probs"][target] for i in ids])
        flipped = np.array([hf[i]["pred_labels"] != by_model[name][i]["pred_labels"] for i in ids])
        ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--")
        ax.scatter(x[~flipped], y[~flipped], s=12, alpha=0.6, label="same answer")
        if flipped.any():
            ax.scatter(x[flipped], y[flipped], s=22, color="#d62728", label=f"flipped ({flipped.sum()})")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"HF p({target})")
        ax.set_ylabel(f"{name} p({target})")
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def quant_ladder(report: dict[str, Any]) -> str | None:
    """File size vs accuracy (with 95% CI) and vs mean KL, one point per GGUF."""
    mode = report["primary_mode"]
    points = []
    for name, model in report["models"].items():
        metrics = (model.get("metrics") or {}).get(mode)
        if model["kind"] != "gguf" or not metrics or model["size_bytes"] is None:
            continue
        kl = (report["parity"][name].get("next_token") or {}).get("mean_kl")
        ci = (metrics.get("ci95") or {}).get("accuracy")
        points.append((model["size_bytes"] / 1e6, metrics["accuracy"], ci, kl, name))
    if not points:
        return None
    points.sort()
    fig = _figure(6.4, 3.4)
    ax = fig.subplots()
    sizes = [p[0] for p in points]
    acc = [p[1] for p in points]
    err = np.array([[p[1] - p[2][0], p[2][1] - p[1]] if p[2] else [0, 0] for p in points]).T
    ax.errorbar(sizes, acc, yerr=err, marker="o", capsize=3, label=f"accuracy ({mode})")
    hf = (report["models"]["hf"].get("metrics") or {}).get(mode)
    if hf:
        ax.axhline(hf["accuracy"], color="#2ca02c", ls="--", lw=1, label=f"HF accuracy {hf['accuracy']:.1%}")
    for size, a, _, _, name in points:
        ax.annotate(name, (size, a), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("accuracy")
    kl_points = [(p[0], max(p[3], 1e-8)) for p in points if p[3] is not None]
    if kl_points:
        twin = ax.twinx()
        twin.plot(*zip(*kl_points), marker="s", color="#d62728", ls=":", label="mean KL vs HF")
        twin.set_yscale("log")
        twin.set_ylabel("mean KL(HF || GGUF)", color="#d62728")
        handles = ax.get_legend_handles_labels()
        twin_handles = twin.get_legend_handles_labels()
        handles = (handles[0] + twin_handles[0], handles[1] + twin_handles[1])
    else:
        handles = ax.get_legend_handles_labels()
    # Below the axes: inside, it would hide the points it explains.
    ax.legend(*handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    ax.set_title("quant ladder: size vs accuracy vs KL", fontsize=10)
    return _png(fig)


def speed(report: dict[str, Any]) -> str | None:
    """Examples per second per backend and mode."""
    names = [n for n, m in report["models"].items() if m["timing"]]
    modes = report["modes"]
    if not names:
        return None
    fig = _figure(max(4.0, 1.1 * len(names) + 1.5), 3.0)
    ax = fig.subplots()
    width = 0.8 / len(modes)
    for k, mode in enumerate(modes):
        values = [(report["models"][n]["timing"].get(mode) or {}).get("examples_per_s") or 0 for n in names]
        bars = ax.bar(np.arange(len(names)) + k * width - 0.4 + width / 2, values, width, label=mode)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(names)), names)
    ax.margins(y=0.15)  # room for the value labels above the bars
    ax.set_ylabel("examples / s")
    ax.set_title("speed per backend", fontsize=10)
    ax.legend(fontsize=7)
    return _png(fig)


def weight_parity_layers(report: dict[str, Any]) -> str | None:
    """Fine-tune delta kept per layer, one line per GGUF (a quant that erases it sits near 0)."""
    blocks = {name: block for name, block in (report.get("weight_parity") or {}).items() if block}
    # With an importance matrix every file was judged activation-weighted: plot that share.
    key = "kept_weighted" if blocks and all(b.get("weighted") for b in blocks.values()) else "kept"
    series = []
    for name, block in blocks.items():
        layers = [row for row in block.get("layers") or [] if str(row.get("layer", "")).isdigit()]
        if layers:
            layers.sort(key=lambda row: int(row["layer"]))
            series.append((name, [int(r["layer"]) for r in layers], [r.get(key) for r in layers]))
    if not series:
        return None
    fig = _figure(6.4, 3.0)
    ax = fig.subplots()
    for name, xs, ys in series:
        ax.plot(xs, ys, marker=".", label=name)
    ax.axhline(1.0, color="#888", lw=0.8, ls="--")
    ax.set_xlabel("layer")
    ax.set_ylabel("fine-tune delta kept" + (" (activation-weighted)" if key == "kept_weighted" else ""))
    ax.legend(fontsize=7, ncol=4)
    ax.set_title("weight-space parity per layer", fontsize=10)
    return _png(fig)


def all_plots(report: dict[str, Any], predictions: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(title, base64 PNG) for every figure that has data."""
    figures = [
        (f"Confusion matrices ({report['primary_mode']})", confusion_matrices(report, report["primary_mode"])),
        ("Label probability: HF vs each GGUF", probability_scatter(report, predictions)),
        ("Quant ladder", quant_ladder(report)),
        ("Speed", speed(report)),
        ("Weight-space parity per layer", weight_parity_layers(report)),
    ]
    return [(title, png) for title, png in figures if png]


# ---- answers ------------------------------------------------------------------------------


def kl_by_position(report: dict[str, Any]) -> str | None:
    """Mean KL (solid) and p90 (dotted) per band of answer-token positions, one colour per GGUF."""
    series = [(name, block["teacher_forced"]["kl_by_position"]) for name, block in report["answers"].items()
              if (block.get("teacher_forced") or {}).get("kl_by_position")]
    if not series:
        return None
    fig = _figure(6.4, 3.2)
    ax = fig.subplots()
    for k, (name, bands) in enumerate(series):
        colour = f"C{k}"
        xs = [(b["from"] + b["to"]) / 2 for b in bands]
        # Log scale: an f16 file's 1e-5 and a 2-bit file's 0.3 belong on one axis; 0 would vanish.
        ax.plot(xs, [max(b["mean"], 1e-9) for b in bands], marker="o", color=colour, label=f"{name} mean")
        ax.plot(xs, [max(b["p90"], 1e-9) for b in bands], ls=":", color=colour, label=f"{name} p90")
    ax.set_yscale("log")
    ax.set_xlabel("position in the reference answer (tokens)")
    ax.set_ylabel("KL(HF || GGUF)")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("KL by position in the answer", fontsize=10)
    return _png(fig)


def first_divergence(report: dict[str, Any]) -> str | None:
    """Rows per band of the first token where each GGUF's greedy answer departs from HF's."""
    series = [(name, block["greedy"]["first_divergence"]["histogram"]) for name, block in report["answers"].items()
              if ((block.get("greedy") or {}).get("first_divergence") or {}).get("histogram")]
    if not series:
        return None
    bins = sorted({(b["from"], b["to"]) for _, hist in series for b in hist})
    fig = _figure(max(4.0, 0.7 * len(bins) + 2.0), 3.0)
    ax = fig.subplots()
    width = 0.8 / len(series)
    for k, (name, hist) in enumerate(series):
        counts = {(b["from"], b["to"]): b["n"] for b in hist}
        ax.bar(np.arange(len(bins)) + k * width - 0.4 + width / 2, [counts.get(b, 0) for b in bins], width, label=name)
    ax.set_xticks(range(len(bins)), [f"{lo}–{hi}" for lo, hi in bins])
    ax.set_xlabel("first divergent token")
    ax.set_ylabel("rows")
    ax.legend(fontsize=7)
    ax.set_title("where greedy answers first diverge from HF", fontsize=10)
    return _png(fig)


def answers_plots(report: dict[str, Any]) -> list[tuple[str, str]]:
    figures = [("KL by position in the answer", kl_by_position(report)),
               ("First divergence of the greedy answers", first_divergence(report)),
               ("Weight-space parity per layer", weight_parity_layers(report))]
    return [(title, png) for title, png in figures if png]

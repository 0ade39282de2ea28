"""The pictures that answer "did it help?": accuracy per round against the baselines, final accuracy with
95% intervals, bytes on the wire. Written by every run and every experiment, and rebuilt from saved
results alone (no model is loaded here).

Conventions: one panel per model (LLM, SLM) and task, rounds on integer ticks, each method a solid or
dashed line, each baseline that has no rounds (Zero-Shot, Centralized, Standalone) a horizontal line.
"""

from __future__ import annotations

from pathlib import Path

from .rounds import RoundRecord, headline
from .stats import wilson

TASK_NAMES = {"commonsense_qa": "CQA", "openbookqa": "OBQA", "arc_challenge": "ARC-C", "arc_easy": "ARC-E"}
LABELS = {"zero_shot": "Zero-Shot", "standalone": "Standalone", "fedavg": "FedAvg", "centralized": "Centralized",
          "fedcollm": "FedCoLLM", "fedcollm_paper": "FedCoLLM (paper's KD)",
          "no_kd": "no KD (λ = 0)"}
COLOURS = {"zero_shot": "0.45", "standalone": "C2", "fedavg": "C1", "centralized": "C3", "fedcollm": "C0",
           "fedcollm_paper": "C4", "no_kd": "C5"}
REFERENCE_STYLE = {"zero_shot": ":", "centralized": "--", "standalone": "-."}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def task_label(task: str) -> str:
    """A task's short name in tables and plots: the paper's abbreviation for the built-in four, else the last
    part of a path (a folder or file of the user's own), else the name itself."""
    if task in TASK_NAMES:
        return TASK_NAMES[task]
    return Path(task).stem or task if ("/" in task or task.endswith((".yaml", ".yml"))) else task


def accuracy_per_round(path: Path, curves: dict[str, list[RoundRecord]], references: dict[str, dict], tasks: list[str],
                       title: str = "") -> Path | None:
    """A grid of panels (rows: LLM, SLM; columns: tasks): each method's accuracy per round as a line,
    each reference method's final accuracy as a horizontal line.

    ``curves``: method -> round records (``{"round": t, "eval": {role: {task: {"acc": ...}}}}``);
    ``references``: method -> ``{role: {task: {"acc": ...}}}``.
    """
    fig = accuracy_figure(curves, references, tasks, title)
    if fig is None:
        return None
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def accuracy_figure(curves: dict[str, list[RoundRecord]], references: dict[str, dict], tasks: list[str],
                    title: str = ""):
    """The figure of ``accuracy_per_round`` (None when there is nothing to draw)."""
    roles = [r for r in ("llm", "slm") if any(r in rec.eval for rs in curves.values() for rec in rs)
             or any(r in ref for ref in references.values())]
    if not roles or not tasks:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(roles), len(tasks), figsize=(3.2 * len(tasks), 2.9 * len(roles)), squeeze=False)
    last = max([rec.round for rs in curves.values() for rec in rs] + [1])
    for row, role in enumerate(roles):
        for col, task in enumerate(tasks):
            ax = axes[row][col]
            for method, records in curves.items():
                pts = [(r.round, _shown(r.eval[role][task])) for r in records if task in r.eval.get(role, {})]
                if pts:
                    ax.plot(*zip(*pts), "-" if method == "fedcollm" else "--", marker="o", ms=3,
                            color=COLOURS.get(method), label=LABELS.get(method, method))
            for method, result in references.items():
                m = result.get(role, {}).get(task)
                if m:
                    ax.axhline(_shown(m), ls=REFERENCE_STYLE.get(method, ":"), lw=1.2,
                               color=COLOURS.get(method), label=LABELS.get(method, method))
            ax.set_xticks(range(0, last + 1))
            ax.set_xlim(-0.2, last + 0.2)
            ax.set_title(f"{role.upper()} · {task_label(task)}", fontsize=9)
            ax.tick_params(labelsize=8)
            if col == 0 or _is_ppl(curves, references, role, task):
                ax.set_ylabel("perplexity" if _is_ppl(curves, references, role, task) else "accuracy %", fontsize=8)
            if row == len(roles) - 1:
                ax.set_xlabel("round", fontsize=8)
    handles = {}
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96 if title else 1))
    return fig


def _shown(m: dict) -> float:
    """What a panel draws: accuracy in %, or (instruction data) the held-out responses' perplexity."""
    name, value = headline(m)
    return 100 * value if name == "acc" else value


def _is_ppl(curves: dict[str, list[RoundRecord]], references: dict[str, dict], role: str, task: str) -> bool:
    ms = [r.eval[role][task] for rs in curves.values() for r in rs if task in r.eval.get(role, {})]
    ms += [ref[role][task] for ref in references.values() if task in ref.get(role, {})]
    return bool(ms) and headline(ms[0])[0] == "ppl"


def _questions(result: dict, role: str, task: str) -> int:
    """How many questions an accuracy rests on (a mean over clients: each client's, the same questions)."""
    n = result.get(role, {}).get(task, {}).get("n")
    if n is None and result.get("clients"):
        n = result["clients"][0].get(task, {}).get("n")
    return int(n or 0)


def final_accuracy_bars(path: Path, results: dict[str, dict], tasks: list[str]) -> Path | None:
    """Final accuracy of every method per model and task, with Wilson 95% intervals over the questions."""
    roles = [r for r in ("llm", "slm") if any(r in res for res in results.values())]
    if not roles:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(roles), figsize=(1.4 + 1.9 * len(tasks) * len(roles), 3.6), squeeze=False)
    for ax, role in zip(axes[0], roles):
        methods = [m for m in LABELS if role in results.get(m, {})]
        width = 0.8 / max(len(methods), 1)
        for i, method in enumerate(methods):
            xs, ys, lo, hi = [], [], [], []
            for j, task in enumerate(tasks):
                m = results[method][role].get(task)
                if not m:
                    continue
                acc, n = m["acc"], _questions(results[method], role, task)
                a, b = wilson(acc * n, n) if n else (acc, acc)  # no count, no interval drawn
                xs.append(j + (i - (len(methods) - 1) / 2) * width)
                ys.append(100 * acc)
                lo.append(100 * (acc - a))
                hi.append(100 * (b - acc))
            ax.bar(xs, ys, width * 0.95, yerr=[lo, hi], capsize=2, color=COLOURS.get(method),
                   label=LABELS.get(method, method), error_kw={"lw": 0.8})
        ax.set_xticks(range(len(tasks)), [task_label(t) for t in tasks], fontsize=8)
        ax.set_title(f"{role.upper()}: final accuracy (95% interval)", fontsize=9)
        ax.set_ylabel("accuracy %", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bytes_per_round(path: Path, curves: dict[str, list[RoundRecord]], params: dict | None) -> Path | None:
    """Mean MB per client per round each way, against sending the whole SLM (full-model FedAvg, fp32)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for method, marker in (("fedcollm", "o"), ("fedavg", "s")):
        rounds = [r for r in curves.get(method, []) if r.comm]
        for way, label in (("sent", "down"), ("received", "up")):
            pts = [(r.round, sum(r.comm.per_client(way)) / len(r.comm.per_client(way)) / 1e6)
                   for r in rounds if r.comm.per_client(way)]
            if pts:
                ax.plot(*zip(*pts), marker=marker, label=f"{LABELS[method]} {label} (LoRA θ)")
                drawn = True
    if not drawn:
        plt.close(fig)
        return None
    if params:
        ax.axhline(4 * params["slm"]["base"] / 1e6, color="grey", ls="--", label="full-model FedAvg (fp32)")
        ax.set_yscale("log")
    last = max(r.round for rs in curves.values() for r in rs)
    ax.set_xticks(range(1, last + 1))
    ax.set(title="bytes per client per round", xlabel="round", ylabel="MB")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

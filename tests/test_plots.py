"""The pictures: what each panel holds, read back from the matplotlib figure (no image comparison)."""

from __future__ import annotations

import pytest

from fedcollm import plots
from fedcollm.rounds import RoundRecord
from fedcollm.stats import wilson


def _acc(v, n=100):
    return {"acc": v, "n": n}


def test_accuracy_per_round_has_a_panel_per_model_and_task_integer_rounds_and_reference_lines(tmp_path):
    rounds = [RoundRecord(t, eval={"llm": {"arc_easy": _acc(0.5 + t / 100), "openbookqa": _acc(0.3)},
                                      "slm": {"arc_easy": _acc(0.4), "openbookqa": _acc(0.2)}}) for t in (1, 2, 3)]
    refs = {"zero_shot": {"llm": {"arc_easy": _acc(0.6), "openbookqa": _acc(0.3)},
                          "slm": {"arc_easy": _acc(0.35), "openbookqa": _acc(0.2)}},
            "centralized": {"llm": {"arc_easy": _acc(0.7), "openbookqa": _acc(0.35)}},
            "standalone": {"slm": {"arc_easy": _acc(0.45), "openbookqa": _acc(0.25)}}}
    fig = plots.accuracy_figure({"fedcollm": rounds}, refs, ["arc_easy", "openbookqa"])
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["LLM · ARC-E", "LLM · OBQA", "SLM · ARC-E", "SLM · OBQA"]
    for ax in axes:
        assert list(ax.get_xticks()) == [0, 1, 2, 3]  # whole rounds only
    llm_arc = {line.get_label(): line for line in axes[0].get_lines()}
    assert set(llm_arc) == {"FedCoLLM", "Zero-Shot", "Centralized"}  # Standalone has no LLM
    assert list(llm_arc["FedCoLLM"].get_ydata()) == pytest.approx([51, 52, 53])
    centralized = llm_arc["Centralized"]
    assert list(centralized.get_ydata()) == pytest.approx([70, 70]) and centralized.get_ls() == "--"
    slm_arc = {line.get_label() for line in axes[2].get_lines()}
    assert slm_arc == {"FedCoLLM", "Zero-Shot", "Standalone"}
    assert plots.accuracy_per_round(tmp_path / "a.png", {"fedcollm": rounds}, refs, ["arc_easy"]).stat().st_size > 0


def test_final_accuracy_bars_carry_wilson_intervals_and_a_mean_over_clients_uses_its_clients_count(tmp_path):
    results = {"zero_shot": {"slm": {"arc_easy": _acc(0.5, 200)}},
               "standalone": {"slm": {"arc_easy": {"acc": 0.55}}, "clients": [{"arc_easy": _acc(0.5, 200)}]}}
    assert plots._questions(results["standalone"], "slm", "arc_easy") == 200
    lo, hi = wilson(100, 200)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(2 * 1.96 * (0.25 / 200) ** 0.5, rel=0.02)
    assert plots.final_accuracy_bars(tmp_path / "b.png", results, ["arc_easy"]).is_file()


def test_fedcollm_report_rebuilds_an_experiment_folder_from_its_saved_results(tmp_path, capsys):
    import json
    import shutil
    from pathlib import Path

    from fedcollm.cli import main

    src = Path(__file__).resolve().parents[1] / "results" / "experiment-cpu-small"
    out = tmp_path / "exp"
    out.mkdir()
    shutil.copy(src / "config.yaml", out / "config.yaml")
    shutil.copytree(src / "methods", out / "methods", ignore=shutil.ignore_patterns("*.error"))
    assert main(["report", str(out)]) == 0
    pngs = {"accuracy_per_round.png", "final_accuracy.png", "bytes_per_round.png"}
    assert {p.name for p in out.glob("*.png")} == pngs
    assert (out / "report.md").read_text().splitlines()[1:] == (src / "report.md").read_text().splitlines()[1:]
    for f in (src / "methods").glob("*.json"):  # the saved results are read, never rewritten
        assert json.loads((out / "methods" / f.name).read_text()) == json.loads(f.read_text())
    run = tmp_path / "run"  # a run folder: its table, report.md and accuracy plot
    run.mkdir()
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(src.parent / "demo" / name, run / name)
    assert main(["report", str(run)]) == 0
    assert (run / "accuracy_per_round.png").is_file() and "accuracy_per_round.png" in (run / "report.md").read_text()
    assert main(["report", str(tmp_path)]) == 2  # not a run or experiment folder: one line
    assert "no config.yaml" in capsys.readouterr().err

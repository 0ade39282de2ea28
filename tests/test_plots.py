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


def test_a_seeded_experiment_gets_one_report_with_each_seed_the_mean_and_claims_over_seeds(tmp_path, capsys):
    import json

    import numpy as np

    from fedcollm.cli import main

    rng = np.random.default_rng(0)

    def scored(p: float, n: int = 40) -> dict:
        bits = "".join("1" if x else "0" for x in rng.random(n) < p)
        return {"acc": bits.count("1") / n, "n": n, "correct": bits, "correct_norm": bits, "ids_sha1": f"q{n}"}

    for seed in range(3):
        methods = tmp_path / "seeded" / f"seed-{seed}" / "methods"
        methods.mkdir(parents=True)
        no_kd_llm = {t: scored(0.5) for t in ("arc_easy", "openbookqa")}
        for name, llm, slm in (("fedavg", None, 0.3), ("no_kd", no_kd_llm, 0.35), ("fedcollm", no_kd_llm, 0.6)):
            result = {"slm": {t: scored(slm) for t in ("arc_easy", "openbookqa")}, "split": "test"}
            if llm is not None:
                result["llm"] = llm
            if name == "fedcollm":
                result["identical_to"] = {"llm": "no_kd"}
            (methods / f"{name}.json").write_text(json.dumps(result))
            (methods / f"{name}.dev.json").write_text("{}")  # dev files are not test results
        extra = methods.parent / "extra"
        extra.mkdir()
        (extra / "proxy.json").write_text(json.dumps({"metrics": {t: scored(0.9) for t in ("arc_easy", "openbookqa")}}))
    assert main(["report", str(tmp_path / "seeded")]) == 0
    assert capsys.readouterr().out.strip() == f"report: {tmp_path / 'seeded' / 'report.md'}"
    report = (tmp_path / "seeded" / "report.md").read_text()
    assert "3 training seeds (0, 1, 2)" in report
    assert "| fedcollm (= no_kd: bit-identical adapter, scored once) | LLM | 2 |" in report
    assert any(line.startswith("| fedcollm | SLM | 3 | ") and "±" in line for line in report.splitlines())
    rows = {line.split("|")[1].strip() + "/" + line.split("|")[2].strip(): line for line in report.splitlines()
            if line.startswith("| SLM: ") or line.startswith("| LLM: ")}
    assert "| 80 × 3 |" in rows["SLM: fedcollm > fedavg/**all**"] and "holds" in rows["SLM: fedcollm > fedavg/**all**"]
    assert "+0.0 | [+0.0, +0.0]" in rows["LLM: fedcollm ≥ no_kd/**all**"]  # the same adapter: no difference
    assert "holds (significant)" in rows["LLM: proxy > no_kd/**all**"]

"""The whole experiment at toy size: every method and task in the report; reruns skip; failures isolate."""

from __future__ import annotations

import json
import os

import pytest

from fedcollm.config import ConfigError, load_config, load_preset
from fedcollm.data.schema import SEAL_ENV
from fedcollm.recipes import experiment


def test_toy_experiment_report_has_every_method_and_task(tiny_models, data_dir, tmp_path, monkeypatch):
    overrides = [
        f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}", "precision=fp32",
        "federation.num_clients=2", "federation.rounds=1", "federation.client_size=4", "federation.aux_size=2",
        "tasks=arc_easy,commonsense_qa", "eval.limit=3", "kd.top_k=8", "tracking=[tensorboard,mlflow]"]
    cfg = load_config(None, overrides)

    def broken(cfg, out):
        raise RuntimeError("boom")

    monkeypatch.setitem(experiment.RUNNERS, "centralized", broken)
    seal_seen = {}
    real_score = experiment.score_on_test

    def score(cfg, out, m):  # the test phase runs with the seal lifted, after the method's dev phase
        seal_seen[m] = os.environ.get(SEAL_ENV)
        assert (out / "methods" / f"{m}.dev.json").is_file()
        return real_score(cfg, out, m)

    monkeypatch.setattr(experiment, "score_on_test", score)
    out = experiment.run_experiment(cfg, tmp_path / "exp")
    assert seal_seen and set(seal_seen.values()) == {None}
    assert (out / "methods" / "centralized.error").is_file()  # the failure is kept ...
    tested = {p.stem for p in (out / "methods").glob("*.json") if not p.name.endswith(".dev.json")}
    assert tested == set(experiment.METHODS) - {"centralized"}  # ... alone
    assert experiment.failed_methods(out) == ["centralized"]  # what makes `fedcollm experiment` exit 1
    monkeypatch.undo()
    stamp = (out / "methods" / "fedcollm.json").stat().st_mtime_ns
    experiment.run_experiment(cfg, out)  # rerun: only the failed method runs again
    assert (out / "methods" / "fedcollm.json").stat().st_mtime_ns == stamp
    assert not (out / "methods" / "centralized.error").exists() and experiment.failed_methods(out) == []
    report_before = (out / "report.md").read_text()
    other = load_config(None, [*overrides, "seed=1", "federation.rounds=2"])
    with pytest.raises(ConfigError, match=r"another config \(differs in seed, federation.rounds\)"):
        experiment.run_experiment(other, out)  # a changed config must not be mixed with finished methods
    assert (out / "report.md").read_text() == report_before
    report = (out / "report.md").read_text()
    for table in ("Table 1", "Table 2", "Table 3"):
        assert table in report
    for task in ("ARC-E", "CQA"):
        row1 = next(line for line in report.splitlines() if line.startswith(f"| {task} |") and line.count("|") == 6)
        assert "-" not in row1.split("|")[2:5]  # Zero-Shot, Centralized, FedCoLLM all present
        row2 = [line for line in report.splitlines() if line.startswith(f"| {task} |") and line.count("|") == 7][0]
        assert "-" not in row2.split("|")[2:6]  # Zero-Shot, Standalone, FedAvg, FedCoLLM
    csv_rows = (out / "results.csv").read_text().splitlines()
    assert {r.split(",")[0] for r in csv_rows[1:]} == set(experiment.METHODS)
    assert (out / "accuracy_per_round.png").stat().st_size > 1000
    assert (out / "bytes_per_round.png").stat().st_size > 1000
    claims = [line for line in report.splitlines() if line.startswith("| LLM: ") or line.startswith("| SLM: ")]
    for claim in ("LLM: fedcollm > zero_shot", "LLM: fedcollm ≈ centralized", "SLM: fedcollm > fedavg",
                  "SLM: fedcollm > standalone", "LLM: fedcollm > no_kd", "SLM: fedcollm > no_kd",
                  "LLM: fedcollm ≥ no_kd", "SLM: fedcollm ≥ no_kd"):
        rows = [line for line in claims if line.startswith(f"| {claim} |")]
        assert {r.split("|")[2].strip() for r in rows} == {"ARC-E", "CQA", "**all**"}, claim
        assert all(r.split("|")[3].strip() in ("3", "6") for r in rows)  # n questions, pooled = 6

    # choose on dev, report on test: dev results per method, the final adapters, test scored from them
    dev = {m: json.loads((out / "methods" / f"{m}.dev.json").read_text()) for m in experiment.METHODS}
    test = {m: json.loads((out / "methods" / f"{m}.json").read_text()) for m in experiment.METHODS}
    assert {d["split"] for d in dev.values()} == {"dev"} and {t["split"] for t in test.values()} == {"test"}
    runs = experiment.RunDir(out / "runs" / "fedcollm").metrics()
    assert dev["fedcollm"]["llm"] == runs[-1].eval["llm"]  # the dev file is the run's last round, on dev
    assert dev["fedcollm"]["slm"]["arc_easy"]["ids_sha1"] != test["fedcollm"]["slm"]["arc_easy"]["ids_sha1"]
    saved = {p.relative_to(out / "adapters").as_posix() for p in (out / "adapters").glob("*/*")}
    assert saved == {"fedcollm/llm", "fedcollm/slm", "fedavg/slm", "centralized/llm", "standalone/slm-client-0",
                     "standalone/slm-client-1", "no_kd/llm", "no_kd/slm"}
    from fedcollm.build import eval_questions, evaluate_model, load_peft
    from fedcollm.models.lora import load_adapter

    on_test = experiment.on_split(cfg, "test")
    model, tok = load_peft(cfg.slm, on_test, "slm")
    load_adapter(model, out / "adapters" / "fedcollm" / "slm")
    again = evaluate_model(model, tok, on_test, eval_questions(on_test), progress=False)
    assert {t: m["correct"] for t, m in again.items()} == {t: m["correct"] for t, m in test["fedcollm"]["slm"].items()}
    assert "Dev split (choices are made here" in report
    # FedAvg, no_kd and FedCoLLM broadcast one θ^1: round 1's two client updates were computed for one and kept
    assert len(list((out / "update-cache").glob("*.safetensors"))) == 2
    owes = report.split("## What each model owes the other", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in owes.splitlines() if line.startswith("| ARC-E |"))
    assert "-" not in row.split("|")[2:8]  # the LLM: Zero-Shot, no_kd, FedCoLLM; the SLM: FedAvg, no_kd, FedCoLLM

    # MLflow: one parent run for the experiment, one child run per method (the federated ones per round)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve()}/mlflow.db")
    parent_id = json.loads((out / "tracking.json").read_text())["mlflow_run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and "report.md" in {a.path for a in client.list_artifacts(parent_id)}
    runs = client.search_runs([parent.info.experiment_id])
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id}
    assert set(children) == set(experiment.METHODS) and len(runs) == len(experiment.METHODS) + 1
    fed_dev = dev["fedcollm"]["llm"]["arc_easy"]["acc"]
    assert children["fedcollm"].data.metrics["eval/llm/arc_easy/acc"] == pytest.approx(fed_dev)
    for m in experiment.METHODS:  # the test figures, once each, on the parent run
        for role in ("llm", "slm"):
            if role in test[m]:
                key = f"test/{m}/{role}/arc_easy/acc"
                assert [x.value for x in client.get_metric_history(parent_id, key)] == [
                    pytest.approx(test[m][role]["arc_easy"]["acc"])], key
    assert "eval/slm/commonsense_qa/acc" in children["standalone"].data.metrics
    assert (out / "runs" / "fedcollm" / "tensorboard").is_dir()
    assert (out / "methods" / "zero_shot.tracking" / "tensorboard").is_dir()


def test_a_dev_only_sweep_reads_no_test_question_and_a_rerun_scores_test_without_retraining(
        tiny_models, data_dir, tmp_path, monkeypatch):
    """``--dev-only`` (a sweep of variants): every phase runs sealed, no test file is written, the report's
    tables and claims are labelled dev; the same folder rerun without it only scores the kept adapters."""
    cfg = load_config(None, [
        f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}", "precision=fp32",
        "federation.num_clients=2", "federation.rounds=1", "federation.client_size=4", "federation.aux_size=2",
        "tasks=arc_easy", "eval.limit=3", "kd.top_k=8", "tracking=[]"])
    real_preflight = experiment.preflight

    def preflight(c):  # dev_only seals the whole command, from its first step
        assert os.environ.get(SEAL_ENV) == "1" and c.eval.split == "dev"
        return real_preflight(c)

    monkeypatch.setattr(experiment, "preflight", preflight)
    out = experiment.run_experiment(cfg, tmp_path / "sweep", ("zero_shot", "fedcollm"), dev_only=True)
    assert SEAL_ENV not in os.environ  # lifted afterwards
    methods = sorted(p.name for p in (out / "methods").iterdir())
    assert methods == ["fedcollm.dev.json", "zero_shot.dev.json"]
    report = (out / "report.md").read_text()
    assert "**Dev only**" in report and "claims hold here (on dev)" in report
    assert any(line.startswith("| LLM: fedcollm > zero_shot | ARC-E | 3 |") for line in report.splitlines())
    stamp = (out / "methods" / "fedcollm.dev.json").stat().st_mtime_ns
    monkeypatch.setattr(experiment, "preflight", real_preflight)
    monkeypatch.setitem(experiment.RUNNERS, "fedcollm", lambda c, o: pytest.fail("retrained on the rerun"))
    experiment.run_experiment(cfg, out, ("zero_shot", "fedcollm"))
    assert (out / "methods" / "fedcollm.dev.json").stat().st_mtime_ns == stamp
    test = json.loads((out / "methods" / "fedcollm.json").read_text())
    assert test["split"] == "test" and test["llm"]["arc_easy"]["n"] == 3
    assert "claims hold here (on test)" in (out / "report.md").read_text()


def test_the_paper_transfer_variant_runs_beside_the_configs_with_its_own_claims(tiny_models, data_dir, tmp_path):
    """``fedcollm_paper``: FedCoLLM with paper-faithful's transfer on this config's splits and budget; the report
    states the paper's claims for it too, and whether the config's transfer beats it."""

    from fedcollm.build import transfer_spec

    cfg = load_config(None, [
        f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}", "precision=fp32",
        "federation.num_clients=2", "federation.rounds=1", "federation.client_size=4", "federation.aux_size=2",
        "tasks=arc_easy", "eval.limit=3", "kd.top_k=8", "tracking=[]", "kd.select=greater", "kd.mix=convex",
        "kd.weight=0.1", "kd.max_steps=1"])
    paper = experiment.paper_transfer(cfg)
    assert transfer_spec(paper) == transfer_spec(load_preset("paper-faithful"))
    assert paper.kd.max_steps == 1 and cfg.kd.select == "greater"  # budget kept, the caller's config untouched
    out = experiment.run_experiment(cfg, tmp_path / "exp", ("zero_shot", "fedcollm", "fedcollm_paper"),
                                    dev_only=True)
    ran = {m: load_config(out / "runs" / m / "config.yaml") for m in ("fedcollm", "fedcollm_paper")}
    assert ran["fedcollm_paper"].method == ran["fedcollm"].method == "fedcollm"
    assert (ran["fedcollm"].kd.select, ran["fedcollm_paper"].kd.select) == ("greater", "none")
    assert transfer_spec(ran["fedcollm_paper"]) == transfer_spec(paper)
    assert {p.name for p in (out / "adapters" / "fedcollm_paper").iterdir()} == {"llm", "slm"}
    report = (out / "report.md").read_text()
    for claim in ("LLM: fedcollm_paper > zero_shot", "SLM: fedcollm_paper > zero_shot",
                  "LLM: fedcollm > fedcollm_paper"):
        assert f"| {claim} | ARC-E | 3 |" in report, claim
    assert "| task | LLM, paper's KD | LLM, this config's |" in report


def test_a_folder_keeps_the_precision_it_was_created_in(tiny_models, data_dir, tmp_path, monkeypatch):
    cfg = load_config(None, [f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}",
                             "precision=fp32", "tasks=arc_easy", "eval.limit=3", "tracking=[]"])
    out = experiment.run_experiment(cfg, tmp_path / "exp", methods=["zero_shot"], dev_only=True)
    recorded = json.loads((out / "machine.json").read_text())
    assert recorded["precision"] == "fp32" and "model" in recorded["cpu"]

    def snapshot():
        return sorted((str(p.relative_to(out)), p.stat().st_mtime_ns) for p in out.rglob("*"))

    before = snapshot()
    # the same config (precision: auto, say) on a machine that picks bf16: refused in one line, nothing written
    monkeypatch.setattr(experiment, "resolve_precision", lambda precision: "bf16")
    with pytest.raises(ConfigError, match=r"was run in fp32 and this machine would run it in bf16") as err:
        experiment.run_experiment(cfg, out, methods=["zero_shot", "fedavg"], dev_only=True)
    assert "\n" not in str(err.value)
    assert snapshot() == before
    monkeypatch.undo()
    experiment.run_experiment(cfg, out, methods=["zero_shot"], dev_only=True)  # where fp32 is picked it goes on


def test_a_bit_identical_adapter_is_scored_once_and_said_to_be_identical(tiny_models, data_dir, tmp_path, monkeypatch):
    """With kd.llm_weight=0 FedCoLLM's LLM is no_kd's, bit for bit: its test result is no_kd's, not rescored."""
    from fedcollm.recipes import final_test

    cfg = load_config(None, [
        f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}", "precision=fp32",
        "federation.num_clients=2", "federation.rounds=1", "federation.client_size=4", "federation.aux_size=4",
        "tasks=arc_easy", "eval.limit=3", "kd.top_k=8", "tracking=[]", "kd.llm_weight=0"])
    scored = []
    real = final_test.evaluate_model
    monkeypatch.setattr(final_test, "evaluate_model", lambda *a, **k: scored.append(1) or real(*a, **k))
    out = experiment.run_experiment(cfg, tmp_path / "exp", ("no_kd", "fedcollm"))
    no_kd, fed = (json.loads((out / "methods" / f"{m}.json").read_text()) for m in ("no_kd", "fedcollm"))
    digest = final_test.adapter_digest
    assert digest(out / "adapters/fedcollm/llm") == digest(out / "adapters/no_kd/llm")
    assert fed["identical_to"] == {"llm": "no_kd"} and fed["llm"] == no_kd["llm"] and "identical_to" not in no_kd
    assert len(scored) == 3  # no_kd's LLM and SLM, FedCoLLM's SLM: FedCoLLM's LLM was not scored again
    assert digest(out / "adapters/fedcollm/slm") != digest(out / "adapters/no_kd/slm")  # the SLM did distil

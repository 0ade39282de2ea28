"""Choose on dev, report on test: with the test split sealed, every tuning path still runs on dev, and any
code that reads a test question fails. This test fails if tuning code touches the test split."""

from __future__ import annotations

import pytest

from fedcollm.config import load_config
from fedcollm.data import DataError, load_eval
from fedcollm.data.schema import SEAL_ENV
from fedcollm.recipes import baselines
from fedcollm.recipes.fedcollm import run_fedcollm

TASKS = "tasks=arc_easy,commonsense_qa"


def _cfg(tiny_models, data_dir, tmp_path, *extra):
    return load_config(None, [
        f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}", "precision=fp32",
        f"output_dir={tmp_path}", "federation.num_clients=2", "federation.rounds=1", "federation.client_size=6",
        "federation.aux_size=4", TASKS, "eval.limit=4", "kd.top_k=16", *extra])


def test_the_seal_refuses_every_test_split(data_dir, monkeypatch):
    monkeypatch.setenv(SEAL_ENV, "1")
    for task in ("arc_easy", "commonsense_qa"):
        with pytest.raises(DataError, match="sealed while tuning"):
            load_eval(task, data_dir)
        assert load_eval(task, data_dir, split="dev")  # dev stays open


def test_tuning_on_dev_never_reads_a_test_question(tiny_models, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(SEAL_ENV, "1")  # inherited by Flower's simulated clients too
    cfg = _cfg(tiny_models, data_dir, tmp_path, "eval.split=dev", "run_name=dev")
    run = run_fedcollm(cfg, progress=False)
    assert set(run.metrics()[-1].eval["llm"]) == {"arc_easy", "commonsense_qa"}
    assert baselines.zero_shot(cfg) and baselines.standalone(cfg) and baselines.centralized(cfg)
    with pytest.raises(DataError, match="sealed while tuning"):  # the same run on test is refused at the door
        run_fedcollm(_cfg(tiny_models, data_dir, tmp_path, "eval.split=test", "run_name=test"), progress=False)
    assert not (tmp_path / "test").exists()

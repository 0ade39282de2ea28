from __future__ import annotations

import pytest

from fedcollm.config import ConfigError, load_config, load_preset, save_config


def test_defaults_file_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("federation:\n  rounds: 5\nkd:\n  temperature: 2\nllm:\n  lora:\n    r: 16\n")
    cfg = load_config(f, ["federation.rounds=7", "tasks=arc_easy,openbookqa", "kd.top_k=null", "slm.lr=1e-4"])
    assert cfg.federation.rounds == 7 and cfg.kd.temperature == 2.0 and isinstance(cfg.kd.temperature, float)
    assert cfg.llm.lora.r == 16 and cfg.slm.lora.r == 8
    assert cfg.tasks == ["arc_easy", "openbookqa"] and cfg.kd.top_k is None and cfg.slm.lr == 1e-4
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


@pytest.mark.parametrize("override,match", [
    ("federation.roundz=3", r"unknown config key federation.roundz \(did you mean federation.rounds\?\)"),
    ("federation.rounds=three", r"federation.rounds = 'three' is not a int"),
    ("kd.temperature=0", "kd.temperature must be > 0"),
    ("tasks=[]", "tasks is empty"),
    ("precision=fp8", r"precision = 'fp8' is not one of auto, bf16, fp32"),
    ("rounds", "not of the form"),
    ("federation.alpha=0", r"federation.alpha \(Dirichlet concentration\) must be > 0"),
    ("federation.aux_size=-3", "federation.aux_size must be >= 0"),
    ("federation.local_epochs=0", "federation.local_epochs must be >= 1"),
    ("kd.max_steps=0", "kd.max_steps must be >= 1"),
    ("slm.lr=-0.1", "slm.lr must be > 0"),
    ("llm.batch_size=0", "llm.batch_size must be >= 1"),
    ("eval.limit=-5", "eval.limit must be >= 1"),
    ("eval.dev_limit=0", "eval.dev_limit must be >= 1"),
    ("federation.train_size=0", "federation.train_size must be >= 1"),
])
def test_bad_values_are_one_clear_line(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_dp_refuses_bf16_transfer():
    load_config(None, ["dp.enabled=true"])  # float32 transfer: fine
    with pytest.raises(ConfigError, match="dp.enabled needs federation.transfer_dtype=float32"):
        load_config(None, ["dp.enabled=true", "federation.transfer_dtype=bfloat16"])


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kd:\n  wieght: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key kd.wieght \(did you mean kd.weight\?\)"):
        load_config(bad)


@pytest.mark.parametrize("override,allowed", [
    ("method=fedprox", "fedcollm, fedavg"),
    ("precision=fp16", "auto, bf16, fp32"),
    ("federation.partition=shards", "iid, dirichlet"),
    ("federation.transfer_dtype=float16", "float32, bfloat16"),
])
def test_enum_fields_are_literals_and_the_error_lists_their_values(override, allowed):
    key, value = override.split("=")
    with pytest.raises(ConfigError, match=f"command line: {key} = '{value}' is not one of {allowed}"):
        load_config(None, [override])


def test_the_engine_is_the_commands_not_a_key_and_an_old_saved_config_still_loads(tmp_path, caplog):
    with pytest.raises(ConfigError, match="^command line: federation.engine is not a config key any more: the command "
                                          "decides it"):
        load_config(None, ["federation.engine=deployment"])
    old = tmp_path / "config.yaml"  # a run folder written by an earlier version
    old.write_text("federation:\n  engine: simulation\n  rounds: 3\n")
    assert load_config(old).federation.rounds == 3
    assert "ignored federation.engine" in caplog.text
    cfg = load_config(None, [])
    assert (cfg.secure_aggregation("simulation"), cfg.secure_aggregation("deployment")) == (False, True)
    cfg = load_config(None, ["secagg.enabled=true"])
    assert cfg.secure_aggregation("simulation") is True


def test_precision_choices_are_the_precision_modules():
    import typing

    from fedcollm import precision
    from fedcollm.config import Config

    assert typing.get_args(typing.get_type_hints(Config)["precision"]) == precision.PRECISIONS


def test_the_task_check_is_one_function(capsys):
    from fedcollm.cli import main
    from fedcollm.data import DataError, check_tasks

    with pytest.raises(DataError, match="unknown task 'mmlu' in tasks"):
        check_tasks(["arc_easy", "mmlu"])
    from fedcollm.build import preflight

    with pytest.raises(DataError, match="unknown task 'mmlu' in eval.tasks"):
        preflight(load_config(None, ["eval.tasks=mmlu"]))  # the config holds names; the data layer knows tasks
    with pytest.raises(ConfigError, match="eval.tasks is empty"):
        load_config(None, ["eval.tasks=[]"])
    assert main(["eval", "--model", "x", "--tasks", ","]) == 2
    assert "--tasks is empty" in capsys.readouterr().err


def test_a_file_value_may_be_repaired_by_an_override(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("federation:\n  num_clients: 2\n  sim_workers: 4\n")
    with pytest.raises(ConfigError, match="sim_workers must be between 1 and federation.num_clients"):
        load_config(f)
    assert load_config(f, ["federation.num_clients=4"]).federation.sim_workers == 4


def test_kd_knobs_reach_the_transfer_and_the_server_loop():
    from fedcollm.build import kd_batch_size, transfer_spec
    from fedcollm.updates import Transfer

    cfg = load_config(None, [])
    assert transfer_spec(cfg) == Transfer()  # the paper: one λ both ways, CE + λ·KL, every sequence
    assert kd_batch_size(cfg) == cfg.slm.batch_size
    fedmkt = load_config(None, ["kd.weight=0.1", "kd.mix=convex", "kd.select=greater", "kd.llm_weight=0",
                                "kd.batch_size=2", "kd.llm_lr=3e-5", "kd.slm_lr=3e-4"])
    assert transfer_spec(fedmkt) == Transfer(llm_weight=0.0, slm_weight=0.1, mix="convex", select="greater")
    assert kd_batch_size(fedmkt) == 2 and fedmkt.kd.llm_lr == 3e-5
    with pytest.raises(ConfigError, match=r"kd.mix = 'sum' is not one of add, convex"):
        load_config(None, ["kd.mix=sum"])
    with pytest.raises(ConfigError, match=r"mix=convex needs weights in \[0, 1\]"):
        load_config(None, ["kd.mix=convex", "kd.slm_weight=1.5"])
    with pytest.raises(ConfigError, match="kd.llm_weight must be >= 0"):
        load_config(None, ["kd.llm_weight=-1"])


def test_the_paper_faithful_preset_is_the_papers_transfer():

    from fedcollm.build import transfer_spec
    from fedcollm.updates import Transfer

    cfg = load_preset("paper-faithful")
    assert transfer_spec(cfg) == Transfer(llm_weight=1.0, slm_weight=1.0, mix="add", select="none", top_k=128)


def test_the_cpu_paper_preset_keeps_the_papers_proportions(data_dir):
    """Issue 11's floor for cpu-paper: K = 4, T >= 3, D^a one fifth of each task's (subsampled) training
    data with >= 150 questions per task, >= 500 test questions per task, dev smaller than test."""

    from fedcollm.build import load_splits

    cfg = load_preset("cpu-paper")
    f = cfg.federation
    assert (f.num_clients, f.aux_fraction, f.aux_size, f.client_size) == (4, 0.2, None, None)
    assert f.rounds >= 3 and round(f.aux_fraction * f.train_size) >= 150
    assert cfg.eval.limit >= 500 and cfg.eval.dev_limit < cfg.eval.limit
    assert sorted(cfg.tasks) == ["arc_challenge", "arc_easy", "commonsense_qa", "openbookqa"]
    cfg.data_dir, f.train_size = str(data_dir), 20  # the fixture's small splits, the preset's cut
    splits = load_splits(cfg)
    for task in cfg.tasks:
        aux = sum(q.task == task for q in splits.aux)
        dealt = sum(q.task == task for c in splits.clients for q in c)
        assert (aux, dealt) == (4, 16)  # 1 : 4 per task


def test_the_cpu_domain_preset_gives_the_clients_a_domain_the_server_holds_only_unlabeled(data_dir):
    """cpu-domain (results/experiment-cpu-domain/): the clients hold CommonsenseQA alone; the server's D^a is
    labeled ARC-E, ARC-C and OBQA, which no client holds, plus CommonsenseQA questions without their answers,
    disjoint from the clients'; the transfer can read those (choices); all four tasks are scored."""
    from fedcollm.build import load_splits

    cfg = load_preset("cpu-domain")
    assert cfg.tasks == ["commonsense_qa"] and cfg.kd.target == "choices"
    assert sorted(cfg.eval_tasks()) == ["arc_challenge", "arc_easy", "commonsense_qa", "openbookqa"]
    cfg.data_dir, cfg.federation.train_size = str(data_dir), 20  # the fixture's small splits, the preset's cut
    splits = load_splits(cfg)
    assert {q.task for c in splits.clients for q in c} == {"commonsense_qa"} and all(splits.clients)
    assert all(q.answer is not None for c in splits.clients for q in c)
    by_task = {t: [q for q in splits.aux if q.task == t] for t in ("arc_easy", "arc_challenge", "openbookqa",
                                                                     "commonsense_qa")}
    assert all(len(qs) == 4 for qs in by_task.values())  # a fifth of each task's 20
    assert all(q.answer is None for q in by_task["commonsense_qa"])
    assert all(q.answer is not None for t in ("arc_easy", "arc_challenge", "openbookqa") for q in by_task[t])
    clients_csqa = {q.id for c in splits.clients for q in c}
    assert not clients_csqa & {q.id for q in by_task["commonsense_qa"]}

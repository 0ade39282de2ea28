"""Bad input never gets past the door.

Every bad input ends in one line on stderr (``fedcollm: error: ...``) naming what and where, exit code
2, nothing overwritten and no run folder left behind. One test (or parametrized case) per way in which
that promise broke: a resume that corrupted its run, values that voided training with exit 0,
tracebacks from library errors, silent overwrites, unchecked paths and ranges. Every run here fails
at the door, so nothing trains.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from fedcollm.cli import main
from fedcollm.config import ConfigError, load_config
from fedcollm.rounds import RoundRecord
from fedcollm.runlog import RunDir


def run_overrides(tiny_models, data_dir, out: Path, name: str = "r") -> list[str]:
    """A tiny, valid run (it would pass every check); each test breaks one thing in it."""
    return [f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}",
            f"output_dir={out}", f"run_name={name}", "precision=fp32", "federation.num_clients=2",
            "federation.rounds=1", "federation.local_max_steps=1", "kd.max_steps=1", "kd.top_k=16",
            "eval.limit=2", "eval.every_round=false"]


def one_line(capsys, *needles: str) -> str:
    """The error in the captured stderr: one ``fedcollm: error:`` line, the last, holding every needle.

    Loading a model may draw transformers' progress bar before it; a traceback would fail here.
    """
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("fedcollm: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and not any("Traceback" in x for x in lines), lines
    err = errors[0]
    for needle in needles:
        assert needle in err, err
    return err


def eval_argv(model: Path, data_dir: Path, *extra: str) -> list[str]:
    return ["eval", "--model", str(model), "--tasks", "arc_easy", "--data-dir", str(data_dir), "--limit", "2",
            "--precision", "fp32", *extra]


@pytest.fixture
def data_copy(data_dir, tmp_path) -> Path:
    """A private copy of the test data folder, to break."""
    return Path(shutil.copytree(data_dir, tmp_path / "data"))


# --- 1. a failed --resume must not corrupt the run ------------------------------------------------------


@pytest.fixture
def finished_run(tiny_models, data_dir, tmp_path) -> RunDir:
    """A run folder as a run leaves it after round 0 (config + zero-shot record)."""
    run = RunDir.create(load_config(None, run_overrides(tiny_models, data_dir, tmp_path / "runs")))
    run.log(RoundRecord(0))
    return run


@pytest.mark.parametrize("override,needle", [
    ("slm.name=bogus-model", "unknown model 'bogus-model'"),
    ("data_dir=/nonexistent/data", "/nonexistent/data"),
])
def test_a_refused_resume_leaves_the_run_config_unchanged(finished_run, override, needle, tiny_models, data_dir,
                                                          capsys):
    before = (finished_run.path / "config.yaml").read_text()
    assert main(["run", "--resume", str(finished_run.path), override]) == 2
    one_line(capsys, needle)
    assert (finished_run.path / "config.yaml").read_text() == before
    _, cfg = RunDir.open(finished_run.path)  # a later --resume gets the run's own config, not the refused one
    assert (cfg.slm.name, cfg.data_dir) == (str(tiny_models["slm"]), str(data_dir))


def test_a_truncated_last_metrics_line_is_dropped_with_a_warning(finished_run, caplog):
    # a kill while appending round 1's record: that round had no checkpoint yet and runs again
    with (finished_run.path / "metrics.jsonl").open("a") as fh:
        fh.write('{"round": 1, "eval": {"slm": {"arc_ea')
    assert [r.round for r in finished_run.metrics()] == [0]
    assert "truncated last record" in caplog.text
    RunDir.open(finished_run.path)  # --resume gets past the door
    finished_run.truncate_after(finished_run.last_round())  # what open_run does: the file is whole again
    assert (finished_run.path / "metrics.jsonl").read_text() == '{"round": 0}\n'


def test_a_corrupt_metrics_line_in_the_middle_is_one_line(finished_run, tmp_path, capsys):
    log = finished_run.path / "metrics.jsonl"
    log.write_text('{"round": 0, "eval": {}}\n{"round": 1, "ev\n{"round": 2, "eval": {}}\n')
    before = log.read_bytes()
    assert main(["run", "--resume", str(finished_run.path)]) == 2
    one_line(capsys, "metrics.jsonl:2: corrupt record")
    assert main(["compare", str(finished_run.path), str(finished_run.path)]) == 2
    one_line(capsys, "metrics.jsonl:2: corrupt record")
    assert log.read_bytes() == before


# --- 2. values that invert or void training must not end in exit 0 -----------------------------------------


@pytest.mark.parametrize("override,needle", [
    ("grad_clip=-1", "grad_clip must be >= 0"),
    ("slm.lr=inf", "slm.lr = 'inf' is not a finite number"),
    ("llm.lr=.inf", "llm.lr = inf is not a finite number"),
    ("kd.temperature=.inf", "kd.temperature = inf is not a finite number"),
])
def test_numbers_that_void_training_are_refused(override, needle, tiny_models, data_dir, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["run", *run_overrides(tiny_models, data_dir, out), override]) == 2
    one_line(capsys, needle)
    assert not out.exists()


def test_an_empty_eval_split_is_a_data_error_not_nan(tiny_models, data_copy, tmp_path, capsys):
    (data_copy / "arc_easy" / "test.jsonl").write_text("\n")
    out = tmp_path / "m.json"
    assert main(eval_argv(tiny_models["slm"], data_copy, "--out", str(out))) == 2
    one_line(capsys, "arc_easy/test.jsonl: no questions")
    assert not out.exists()
    runs = tmp_path / "runs"
    assert main(["run", *run_overrides(tiny_models, data_copy, runs)]) == 2
    one_line(capsys, "no questions")
    assert not runs.exists()


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_a_limit_below_one_is_refused_not_read_as_all(limit, tiny_models, data_dir, tmp_path, capsys):
    out = tmp_path / "m.json"
    argv = eval_argv(tiny_models["slm"], data_dir, "--out", str(out))
    argv[argv.index("--limit") + 1] = limit
    assert main(argv) == 2
    one_line(capsys, f"--limit must be >= 1, got {limit}")
    assert not out.exists()


@pytest.fixture(scope="module")
def adapter(tiny_models, tmp_path_factory) -> Path:
    """A valid LoRA adapter for the tiny SLM, as ``fedcollm run`` saves one."""
    from transformers import AutoModelForCausalLM

    from fedcollm.models.lora import LoraSpec, attach_lora, save_adapter

    base = AutoModelForCausalLM.from_pretrained(tiny_models["slm"])
    return save_adapter(attach_lora(base, LoraSpec(r=4)), tmp_path_factory.mktemp("adapter") / "ok")


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _nan_weights(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "adapter_model.safetensors"))
    first = sorted(state)[0]
    state[first] = state[first] * float("nan")
    save_file(state, str(folder / "adapter_model.safetensors"))


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


BROKEN_ADAPTERS = {
    # PEFT loads these with at most a warning: evaluated without (part of) the adapter, exit 0
    "keys differ": (lambda d: _edit_config(d, target_modules=["qq_proj", "v_proj"]), "adapter keys differ"),
    "NaN weights": (_nan_weights, "contains NaN or Inf"),
    # tracebacks: JSON, safetensors, size mismatch, PEFT's own errors
    "bad JSON": (lambda d: (d / "adapter_config.json").write_text('{"r": 4,'), "adapter_config.json: not valid JSON"),
    "not UTF-8": (lambda d: (d / "adapter_config.json").write_bytes(b"\xff\xfe{"), "adapter_config.json: not UTF-8"),
    "no weights": (lambda d: (d / "adapter_model.safetensors").unlink(), "missing adapter_model.safetensors"),
    "truncated weights": (lambda d: _truncate(d / "adapter_model.safetensors"), "not a readable safetensors file"),
    "wrong rank": (lambda d: _edit_config(d, r=8), "has shape"),
    "unknown target": (lambda d: _edit_config(d, target_modules=["qq_proj"]), "does not fit this model"),
}


@pytest.mark.parametrize("case", list(BROKEN_ADAPTERS))
def test_eval_checks_an_adapter_as_strictly_as_an_update(case, adapter, tiny_models, data_dir, tmp_path, capsys):
    broken = Path(shutil.copytree(adapter, tmp_path / "adapter"))
    breaks, needle = BROKEN_ADAPTERS[case]
    breaks(broken)
    out = tmp_path / "m.json"
    assert main(eval_argv(tiny_models["slm"], data_dir, "--adapter", str(broken), "--out", str(out))) == 2
    one_line(capsys, needle, str(broken))
    assert not out.exists()


def test_an_adapter_of_another_model_is_refused(tiny_models, data_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from fedcollm.models.lora import LoraSpec, attach_lora, save_adapter

    llm_adapter = save_adapter(attach_lora(AutoModelForCausalLM.from_pretrained(tiny_models["llm"]), LoraSpec(r=4)),
                               tmp_path / "llm-adapter")
    assert main(eval_argv(tiny_models["slm"], data_dir, "--adapter", str(llm_adapter))) == 2
    one_line(capsys, "adapter keys differ")


# --- 3. library errors are one line, and run-time failures are caught before the run folder ---------------


def test_non_utf8_bytes_in_yaml_jsonl_and_compare_inputs(tiny_models, data_copy, tmp_path, capsys):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_bytes(b"seed: 1\n# caf\xe9\n")
    assert main(["run", "--config", str(yaml_file)]) == 2
    one_line(capsys, f"{yaml_file}: not UTF-8")

    train = data_copy / "arc_easy" / "train.jsonl"
    lines = train.read_bytes().splitlines(keepends=True)
    train.write_bytes(b"".join(lines[:2]) + b'{"id": "\xff"}\n' + b"".join(lines[3:]))
    out = tmp_path / "split"
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("{}\n")
    assert main(["data", "split", f"data_dir={data_copy}", "--config", str(cfg), "--out", str(out)]) == 2
    one_line(capsys, f"{train}:3: not UTF-8")
    assert not out.exists()

    result = tmp_path / "result.json"
    result.write_bytes(b'{"metrics": {"arc_easy": "\xff"}}')
    assert main(["compare", str(result), str(result)]) == 2
    one_line(capsys, f"{result}: not UTF-8")


def test_truncated_model_weights_fail_at_the_door(tiny_models, data_dir, tmp_path, capsys):
    model = Path(shutil.copytree(tiny_models["slm"], tmp_path / "slm"))
    _truncate(model / "model.safetensors", keep=0.9)
    assert main(eval_argv(model, data_dir)) == 2
    one_line(capsys, "model.safetensors is corrupt or truncated")
    out = tmp_path / "runs"
    assert main(["run", *run_overrides(tiny_models, data_dir, out), f"slm.name={model}"]) == 2
    one_line(capsys, "model.safetensors is corrupt or truncated")
    assert not out.exists()


@pytest.mark.parametrize("command", ["run", "experiment", "data", "certs", "eval", "compare"])
def test_an_output_path_that_is_a_file_or_folder_is_refused(command, tiny_models, data_dir, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder\n")
    (tmp_path / "empty.yaml").write_text("{}\n")
    run = run_overrides(tiny_models, data_dir, blocker)
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"metrics": {"arc_easy": {"acc": 0.5, "correct": "10", "ids_sha1": "x"}}}))
    argv, needle = {
        "run": (["run", *run], "is a file, not a folder"),
        "experiment": (["experiment", "--config", str(tmp_path / "empty.yaml"), "--out", str(blocker), *run[:3]],
                       "is a file, not a folder"),
        "data": (["data", "split", run[2], "--config", str(tmp_path / "empty.yaml"), "--out", str(blocker)],
                 "is a file, not a folder"),
        "certs": (["certs", "--out", str(blocker / "certs")], "is a file, not a folder"),
        "eval": (eval_argv(tiny_models["slm"], data_dir, "--out", str(tmp_path)), "is a folder; give a file name"),
        "compare": (["compare", str(result), str(result), "--out", str(tmp_path)], "is a folder; give a file name"),
    }[command]
    assert main(argv) == 2
    one_line(capsys, needle)
    assert blocker.read_text() == "not a folder\n"


@pytest.mark.parametrize("size", ["0", "-2"])
def test_an_eval_batch_size_below_one_is_refused(size, tiny_models, data_dir, capsys):
    assert main(eval_argv(tiny_models["slm"], data_dir, "--batch-size", size)) == 2
    one_line(capsys, "--batch-size must be >= 1")


@pytest.mark.parametrize("override,needle", [
    ("slm.lora.r=0", "slm.lora.r must be >= 1"),
    ("slm.lora.targets=qq_proj", "slm.lora.targets: qq_proj names no module"),
    ("llm.lora.targets=q_proj,zz_proj", "llm.lora.targets: zz_proj names no module"),  # PEFT drops it silently
    ("slm.lora.targets=mlp", "slm.lora.targets: Target module"),  # a block, not a layer LoRA can wrap
    ("device=cuda", "device=cuda but no CUDA GPU is visible"),
])
def test_lora_and_device_are_checked_before_the_run_folder_exists(override, needle, tiny_models, data_dir, tmp_path,
                                                                   capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "runs"
    overrides = run_overrides(tiny_models, data_dir, out)
    assert main(["run", *overrides, override]) == 2
    one_line(capsys, needle)
    assert not out.exists()
    RunDir.new_path(load_config(None, overrides))  # so nothing blocks the same run_name once it is fixed


# --- 4. no overwrite without refusal --------------------------------------------------------------------


def test_data_split_refuses_a_folder_with_files_of_another_split(tiny_models, data_dir, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("{}\n")
    out = tmp_path / "split"
    tail = ["--config", str(tmp_path / "c.yaml"), "--out", str(out)]
    assert main(["data", "split", f"data_dir={data_dir}", "federation.num_clients=4", *tail]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["data", "split", f"data_dir={data_dir}", "federation.num_clients=2", *tail]) == 2
    one_line(capsys, "client-2.jsonl, client-3.jsonl")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # the same split again: the same files, rewritten
    assert main(["data", "split", f"data_dir={data_dir}", "federation.num_clients=4", *tail]) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_certs_refuse_to_replace_a_ca_and_keys(tmp_path, capsys):
    out = tmp_path / "certs"
    assert main(["certs", "--out", str(out), "--nodes", "1"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(["certs", "--out", str(out), "--nodes", "2"]) == 2
    one_line(capsys, "already holds certificates or keys", "ca.crt")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_private_keys_are_never_readable_by_others(tmp_path, monkeypatch):
    from fedcollm.federation.tls import make_certs

    monkeypatch.setattr(Path, "chmod", lambda self, mode: None)  # only the mode they are created with counts
    old = os.umask(0o022)
    try:
        certs = make_certs(tmp_path / "certs", 1)
    finally:
        os.umask(old)
    for key in (certs.server_key, tmp_path / "certs" / "ca.key", *certs.node_keys):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE(certs.ca.stat().st_mode) == 0o644  # public files stay readable


# --- 5. paths and ranges --------------------------------------------------------------------------------


@pytest.mark.parametrize("override,needle", [
    ("run_name=../escape", "run_name '../escape' must be a plain folder name"),
    ("run_name=a/b", "must be a plain folder name"),
    ("run_name=..", "must be a plain folder name"),
    ("federation.connect_timeout=0", "federation.connect_timeout must be > 0"),
    ("federation.round_timeout=-5", "federation.round_timeout must be > 0"),
    ("secagg.timeout=0", "secagg.timeout must be > 0"),
    ("federation.max_update_norm=0", "federation.max_update_norm must be > 0"),
    ("federation.max_update_norm=-1", "federation.max_update_norm must be > 0"),
    ("dp.clipping_norm=.inf", "dp.clipping_norm = inf is not a finite number"),
    ("federation.update_outlier_factor=.inf", "federation.update_outlier_factor = inf is not a finite number"),
    ("federation.sim_workers=5", "federation.sim_workers must be between 1 and federation.num_clients (4)"),
])
def test_paths_and_ranges_are_checked(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        load_config(None, [override])


def test_an_absolute_run_name_writes_nothing_outside_output_dir(tiny_models, data_dir, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    assert main(["run", *run_overrides(tiny_models, data_dir, tmp_path / "runs"), f"run_name={elsewhere}"]) == 2
    one_line(capsys, "must be a plain folder name")
    assert not elsewhere.exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value,needle", [
    ("foo", "'foo' is not KIND:PARTITION:ROUND"),
    ("exit:x:1", "PARTITION must be an integer"),
    ("melt:0:1", "unknown fault kind 'melt'"),
    ("drop-bogus:0:1", "unknown fault kind 'drop-bogus'"),
    ("raise:0:0", "ROUND >= 1"),
])
def test_fault_variable_junk_is_one_line_naming_it(value, needle):
    from fedcollm import faults

    os.environ[faults.ENV] = value
    try:
        with pytest.raises(ConfigError, match=f"FEDCOLLM_FAULT={value!r}"):
            faults.check_env()
        with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
            faults.check_env()
    finally:
        del os.environ[faults.ENV]


def test_every_documented_fault_kind_is_valid(monkeypatch):
    from fedcollm import faults

    kinds = ["exit", "kill-node", "raise", "nan", "scale", "shape", "keys", "drop-setup", "drop-share_keys",
             "drop-collect_masked_vectors", "drop-unmask"]
    monkeypatch.setenv(faults.ENV, ";".join(f"{k}:{i}:1" for i, k in enumerate(kinds)))
    faults.check_env()
    assert faults.planned(3, 1) == "nan" and faults.planned(3, 2) is None


def test_a_bad_fault_variable_stops_a_run_at_the_door(tiny_models, data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEDCOLLM_FAULT", "exit:x:1")
    out = tmp_path / "runs"
    assert main(["run", *run_overrides(tiny_models, data_dir, out)]) == 2
    one_line(capsys, "FEDCOLLM_FAULT='exit:x:1'")
    assert not out.exists()


def test_a_good_adapter_loads_as_peft_loads_it(tiny_models, data_dir, tmp_path, capsys):
    """The strict loader changes what is refused, not what a valid adapter computes."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from fedcollm.models.lora import LoraSpec, attach_lora, load_adapter_model, save_adapter

    spec = LoraSpec(r=4, targets=["q_proj", "o_proj"])
    model = attach_lora(AutoModelForCausalLM.from_pretrained(tiny_models["slm"]), spec)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    folder = save_adapter(model, tmp_path / "trained")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    ours = load_adapter_model(AutoModelForCausalLM.from_pretrained(tiny_models["slm"]), folder)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models["slm"]), folder).eval()
    plain = AutoModelForCausalLM.from_pretrained(tiny_models["slm"]).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, peft(ids).logits)
        assert not torch.allclose(ours(ids).logits, plain(ids).logits)
    out = tmp_path / "m.json"
    assert main(eval_argv(tiny_models["slm"], data_dir, "--adapter", str(folder), "--out", str(out))) == 0
    assert json.loads(out.read_text())["metrics"]["arc_easy"]["n"] == 2

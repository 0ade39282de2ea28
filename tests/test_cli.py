"""User errors end with one line on stderr and exit code 2, and never touch an existing run."""

from __future__ import annotations

import pytest

from fedcollm.cli import main


@pytest.mark.parametrize("argv,needle", [
    (["run", "federation.roundz=3"], "unknown config key federation.roundz (did you mean federation.rounds?)"),
    (["run", "--config", "/nonexistent/c.yaml"], "config file /nonexistent/c.yaml does not exist"),
    (["eval", "--model", "no-such-model", "--tasks", "arc_easy"], "unknown model 'no-such-model'"),
    (["eval", "--model", "x", "--tasks", "arc_easy,mmlu"], "unknown task 'mmlu'"),
    (["models", "prepare", "nope"], "unknown built-in model 'nope'"),
])
def test_user_errors_are_one_line_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err and err.startswith("fedcollm: error:")


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    run = tmp_path / "runs" / "taken"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"round": 1}\n')
    assert main(["run", f"output_dir={tmp_path / 'runs'}", "run_name=taken"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == '{"round": 1}\n'


def test_eval_on_a_local_folder_prints_and_writes_metrics(tiny_models, data_dir, tmp_path, capsys):
    import json

    out = tmp_path / "m.json"
    assert main(["eval", "--model", str(tiny_models["slm"]), "--tasks", "arc_easy,commonsense_qa",
                 "--data-dir", str(data_dir), "--limit", "5", "--precision", "fp32", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert set(metrics) == {"arc_easy", "commonsense_qa"} and metrics["arc_easy"]["n"] == 5
    assert "arc_easy" in capsys.readouterr().out
    dev = tmp_path / "dev.json"  # the dev split: other questions than the test split's
    assert main(["eval", "--model", str(tiny_models["slm"]), "--tasks", "commonsense_qa", "--split", "dev",
                 "--data-dir", str(data_dir), "--limit", "5", "--precision", "fp32", "--out", str(dev)]) == 0
    result = json.loads(dev.read_text())
    assert result["split"] == "dev"
    assert result["metrics"]["commonsense_qa"]["ids_sha1"] != metrics["commonsense_qa"]["ids_sha1"]


@pytest.fixture
def other_tokenizer_model(tiny_models, tmp_path):
    """The tiny LLM's weights with a tokenizer of another vocabulary (another model family)."""
    import shutil

    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    out = tmp_path / "other-family"
    shutil.copytree(tiny_models["llm"], out)
    for f in out.glob("tokenizer*"):
        f.unlink()
    tok = Tokenizer(models.WordLevel({"<pad>": 0, "x": 1, "y": 2}, unk_token="x"))
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>").save_pretrained(out)
    return out


@pytest.mark.parametrize("extra,needle", [
    (["federation.client_size=0"], "federation.client_size must be >= 1"),
    (["federation.num_clients=500"], "cannot be dealt to 500 clients"),
    (["federation.min_clients=5"], "federation.min_clients must be between 1 and the clients trained per round"),
    (["llm.name=OTHER"], "tokenizers differ"),
    (["data_dir=/nonexistent/data"], "/nonexistent/data"),
])
@pytest.mark.parametrize("command", ["run", "experiment"])
def test_bad_run_configs_fail_before_any_run_folder_exists(command, extra, needle, tiny_models, data_dir, tmp_path,
                                                           other_tokenizer_model, capsys):
    extra = [e.replace("OTHER", str(other_tokenizer_model)) for e in extra]
    out = tmp_path / "runs"
    if command == "experiment":
        (tmp_path / "empty.yaml").write_text("{}\n")
        head = ["experiment", "--config", str(tmp_path / "empty.yaml"), "--out", str(out / "exp")]
    else:
        head = ["run"]
    argv = [*head, f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}",
            f"output_dir={out}", "run_name=r", "federation.num_clients=4", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err, err
    assert not out.exists()  # nothing written


def test_a_full_disk_is_the_systems_error_not_the_users_and_says_so_in_one_line(tiny_models, data_dir, tmp_path,
                                                                               capsys, monkeypatch):
    import errno

    from fedcollm.cli import EXIT_CODES
    from fedcollm.runlog import RunDir

    def full(cfg):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "runs" / "r"))

    monkeypatch.setattr(RunDir, "create", staticmethod(full))
    argv = ["run", f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}",
            "precision=fp32", f"output_dir={tmp_path / 'runs'}", "run_name=r", "federation.num_clients=2"]
    assert main(argv) == EXIT_CODES["system"] == 6
    err = capsys.readouterr().err.strip()
    where = tmp_path / "runs" / "r"
    assert err == f"fedcollm: error: system error (ENOSPC): [Errno 28] No space left on device: '{where}'"


def test_only_input_errors_exit_2():
    import errno

    from fedcollm.cli import EXIT_CODES, exit_code
    from fedcollm.config import ConfigError
    from fedcollm.data import DataError
    from fedcollm.federation import DeployError, MissingProgram
    from fedcollm.runlog import RoundError

    assert {exit_code(e) for e in (ConfigError("x"), DataError("x"), FileNotFoundError("x"),
                                   OSError(errno.ENAMETOOLONG, "x"), PermissionError("x"))} == {2}
    assert exit_code(RoundError("x")) == 3 and exit_code(DeployError("x")) == 4
    assert exit_code(MissingProgram("x")) == 5
    assert {exit_code(e) for e in (OSError(errno.ENOSPC, "x"), OSError(errno.EIO, "x"), MemoryError())} == {6}
    assert sorted(EXIT_CODES.values()) == [2, 3, 4, 5, 6]

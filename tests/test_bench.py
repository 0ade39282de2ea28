"""The benchmark harness (bench/) on tiny random-weight models: every benchmark runs and reports sane figures.

No timing is asserted (timings of tiny models on a shared CPU mean nothing); what is checked is that each
benchmark compares like with like (same loss, same predictions, same bytes accounting) and reports the
keys the table and the JSON need. The real-model run is ``python -m bench`` (results/bench/).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import client_step, comm, eval_scorer, kd_step, memory, sampling, scaling
from bench.common import Setup, check, interleaved, train_step_flops

ROW_KEYS = {"bench", "figure", "ours", "baseline", "ratio", "target", "met", "unit"}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Tiny models gain nothing from threads, and on a busy CPU every multi-threaded op waits (see common)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # children (KD memory) and main(), which sets them
        monkeypatch.setenv(var, "1")
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def setup(tiny_models, data_dir) -> Setup:
    return Setup(slm=str(tiny_models["slm"]), llm=str(tiny_models["llm"]), data_dir=str(data_dir), precision="fp32",
                 quick=True, device="cpu")


def _rows(out: dict) -> dict[str, dict]:
    for r in out["rows"]:
        assert set(r) == ROW_KEYS
    return {r["figure"]: r for r in out["rows"]}


def test_choose_threads_and_background_load(monkeypatch):
    from bench.common import BackgroundLoad, choose_threads

    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                             "while time.process_time() - t < 1.0: pass"])  # another process: 1 s of CPU
    try:
        with BackgroundLoad() as load:  # until it ends, unreaped: a reaped child's CPU counts as this process's
            os.waitid(os.P_PID, busy.pid, os.WEXITED | os.WNOWAIT)
    finally:
        busy.kill()
        busy.wait()
    assert load.cores >= 0.3  # its second of CPU, over at most a few seconds of wall; other load only adds
    got = choose_threads("auto")
    assert got["threads"] in (1, got["cores"]) and set(got["probe"]) >= {"other_busy_cores", "one_thread_op_ms"}
    assert choose_threads("1")["threads"] == 1 and torch.get_num_threads() == 1


def test_check_and_interleaved():
    assert check(1.2, ">=", 1.0) == (">= 1", True) and check(1.2, "<=", 1.15)[1] is False
    assert check(1.0, "==", 1.0)[1] is True and check(None, ">=", 3)[1] is None
    calls = []
    t = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then ABBA order
    assert set(t) == {"a", "b"} and len(t["a"]["runs_s"]) == 3 and t["a"]["median_s"] >= t["a"]["min_s"]


def test_flops_count_the_full_head_only_for_the_baseline(setup):
    model, _ = setup.peft("slm")
    ours, hf = train_step_flops(model, 4, 32, 10), train_step_flops(model, 4, 32, 4 * 32)
    assert 0 < ours["total"] < hf["total"] and hf["total"] - ours["total"] == pytest.approx(hf["head"] - ours["head"])
    assert ours["backward"] > ours["forward"] * 0.9  # input-grads of every layer + LoRA weight-grads


def test_client_step_same_loss_both_arms(setup):
    out = client_step.run(setup, steps=1, reps=1)
    f = out["figures"]
    assert f["loss_first_batch"]["abs_diff"] < 1e-4  # the baseline trains the same objective
    assert f["flops"]["hf"] > f["flops"]["ours"] > 0 and f["matmul_peak"]["gflops"] > 0
    tps = _rows(out)["tokens/s (1 steps x 4)"]
    assert tps["ratio"] > 0 and tps["target"] == ">= 1"


def test_kd_step_and_its_memory_child(setup):
    out = kd_step.run(setup, reps=1, what_if=True)
    rows = list(_rows(out).values())
    assert rows[0]["target"] == "<= 1.15" and rows[0]["ratio"] > 0
    for mem in out["figures"]["memory"].values():
        assert mem["weights_gib"] > 0 and mem["peak_rss_gib"] >= mem["rss_before_step_gib"] > 0
    assert set(out["figures"]["memory"]) == {"kd", "kd_sequential"}
    assert set(out["figures"]["timing"]) == {"kd", "sft_llm", "sft_slm", "kd_sequential"}


def test_sequential_kd_what_if_has_the_joint_steps_gradients(setup):
    """Without dropout the what-if reorders the work of ``mutual_kd_step`` and changes nothing else."""
    from fedcollm.updates import Transfer, mutual_kd_step

    llm, tok = setup.peft("llm")
    slm, _ = setup.peft("slm")
    batch = kd_step.kd_batches(setup, tok, 1, 4)[0]

    def grads(step):
        for m in (llm, slm):
            m.zero_grad(set_to_none=True)
            m.eval()  # no LoRA dropout
        step(batch)["loss"].backward()
        return [p.grad.clone() for m in (llm, slm) for p in m.parameters() if p.requires_grad]

    joint = grads(mutual_kd_step(llm, slm, Transfer(top_k=16)))
    seq = grads(kd_step.sequential_kd_step(llm, slm, 1.0, 1.0, 16))
    assert len(joint) == len(seq) > 0 and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(joint, seq))


def test_eval_scorer_agrees_with_lm_eval(setup):
    out = eval_scorer.run(setup, limit=4, batch_size=2, reps=1, warmup_questions=0)
    assert set(out["figures"]) == {"float32"}  # the run's precision (fp32 here: no second, fp32 check)
    f = out["figures"]["float32"]
    assert f["agreement"]["acc_per_question"] == "4/4" and f["agreement"]["max_abs_loglikelihood_diff"] < 1e-3
    assert f["agreement"]["questions_that_differ"] == []
    acc = [r for r in out["rows"] if r["figure"].startswith("acc")]
    assert len(acc) == 2 and all(r["met"] for r in acc)
    assert f["speedup"] > 0 and f["lm_eval"]["seconds"] > 0


def test_comm_counts_what_flower_sends(setup):
    out = comm.run(setup, clients=2)
    f = out["figures"]
    raw = f["adapter"]["raw_bytes_fp32"]
    assert f["down_round2"]["total"] > f["down_round2"]["object_contents"] > raw  # headers + npy framing
    assert f["up"]["total"] > raw and f["up"]["by_object_type"]["ArrayChunk"] > raw
    assert f["what_if"]["one Array per tensor (before packing)"]["total"] > f["up"]["total"]  # packing pays
    bf16 = f["what_if"]["bf16 transfer (federation.transfer_dtype)"]
    assert bf16["raw_bytes"] == raw // 2 and bf16["total"] < f["up"]["total"] - 0.45 * raw  # saves half of θ
    assert f["config_yaml_bytes"] > 100


def test_scaling_rows_and_fixed_length_batches(setup):
    from fedcollm.data import load_split

    _, tok = setup.peft("slm")
    qs = load_split("arc_easy", "train", setup.data_dir)
    b = scaling.fixed_length_batch(tok, qs[:3], 48, qs[10:20])
    assert tuple(b.input_ids.shape) == (3, 48) and int(b.attention_mask.sum()) == 3 * 48
    out = scaling.run(setup, clients=[1, 2], lengths=[24, 48], per_client=2, aux_size=2)
    f = out["figures"]
    assert set(f["by_clients"]) == {"1", "2"} and len(f["by_clients"]["2"]["client_s_each"]) == 2
    assert set(f["by_length"]) == {"client@24", "kd@24", "client@48", "kd@48"}


def test_memory_sampler_sees_a_child_tree():
    import psutil

    code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(5)']);"
            " b = b'x' * (64 << 20); time.sleep(5)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline, s = time.monotonic() + 60, None
        while time.monotonic() < deadline:  # until the child has started its own child and filled its buffer
            s = memory.tree_sample(proc.pid)
            if s is not None and len(s["per_proc"]) == 2 and s["dedup"] > 64 << 20:
                break
            time.sleep(0.05)
    finally:
        for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
            p.kill()
        proc.wait()
    assert s is not None and len(s["per_proc"]) == 2
    assert s["rss_sum"] >= s["dedup"] > 64 << 20 and s["pss_sum"] > 0


def test_main_writes_json_and_table(setup, tmp_path, capsys):
    from bench.__main__ import main

    out = tmp_path / "bench.json"
    report = main(["--only", "comm", "--quick", "--slm", setup.slm, "--llm", setup.llm, "--data-dir",
                   setup.data_dir, "--precision", "fp32", "--threads", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["command"].startswith("python -m bench --only comm")
    assert {"machine", "threads_requested", "precision", "benchmarks", "rows", "targets"} <= set(saved)
    assert saved["machine"]["cpu_count"] >= 1 and saved["benchmarks"]["comm"]["threads"]["threads"] == 1
    assert 0 <= saved["benchmarks"]["comm"]["other_busy_cores_during"] <= saved["machine"]["cpu_count"]
    assert saved["precision"]["resolved"] == "fp32" and report["targets"]["failed_benchmarks"] == []
    assert len(saved["rows"]) >= 2 and "comm" in capsys.readouterr().out


@pytest.mark.slow
def test_memory_benchmark_runs_a_simulated_round(setup):
    out = memory.run(setup, clients=2, what_if=False)
    f = out["figures"]["runs"]["as is"]
    assert f["peak"]["rss_sum"] >= f["peak"]["dedup_rss"] > 0
    assert {"server", "client worker"} <= set(f["at_peak_by_role_gib"])
    assert sum(f["at_peak_where"].values()) == pytest.approx(f["peak"]["dedup_rss"] / 2**30, abs=0.01)


@pytest.mark.slow
def test_quick_suite_on_the_real_models(tmp_path):
    if not os.environ.get("FEDCOLLM_DATA_DIR"):  # the client benchmark reads real ARC-Easy batches
        pytest.skip("needs FEDCOLLM_DATA_DIR")
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "comm,client", "--out",
                           str(tmp_path / "b.json")], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = json.loads((tmp_path / "b.json").read_text())
    assert set(saved["benchmarks"]) == {"comm", "client"}


@pytest.mark.slow  # three real `fedcollm run` processes: the bench measures each one's own server RSS
def test_sampling_bench_runs_each_arm_with_the_clients_it_names(setup):
    out = sampling.run(setup)  # quick: 4 of 10, 4 of 40 and 8 of 10 simulated nodes, 2 rounds each
    rows = _rows(out)
    assert len(rows) == 4
    base, many, double = out["arms"]
    assert (base["registered"], many["registered"], double["sampled"]) == (10, 40, 8)
    for a in out["arms"]:
        assert a["clients_per_round"] == [a["sampled"]] * 2 and a["server_peak_rss_mb"] > 0
    first = next(iter(rows.values()))
    assert first["baseline"] == pytest.approx(base["median_round_s"], abs=1e-3)
    assert first["ours"] == pytest.approx(many["median_round_s"], abs=1e-3)


def test_packing_bench_times_both_layouts_on_the_same_examples(setup):
    from bench import packing

    out = packing.run(setup)
    rows = _rows(out)
    f = out["figures"]
    for step in ("client", "kd"):
        assert f[step]["padded_tokens"] > f[step]["real_tokens"] > 0  # mixed tasks: the padded layout pads
        r = rows[f"{step} step examples/s (cpu-paper batches of 4)"]
        assert r["ours"] > 0 and r["baseline"] > 0 and r["ratio"] == pytest.approx(r["ours"] / r["baseline"], rel=1e-3)
    loss = f["first_batch_loss"]
    assert loss["packed"] == pytest.approx(loss["padded"], rel=1e-4)  # one objective in both layouts


def test_choice_kd_bench_times_both_targets_on_the_same_questions(setup):
    from bench import choice_kd

    out = choice_kd.run(setup)
    rows = _rows(out)
    r = rows["KD step D^a examples/s, choices vs tokens (cpu-paper batches of 4)"]
    assert r["ours"] > 0 and r["baseline"] > 0 and r["ratio"] == pytest.approx(r["ours"] / r["baseline"], rel=1e-3)
    assert out["figures"]["examples"] == 8 and r["target"] == ">= 0.5"

"""FedCoLLM on Flower with tiny models: aggregation, rejection of bad updates, a simulated run, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from safetensors.numpy import load_file

from fedcollm.config import load_config
from fedcollm.federation.strategy import CheckedFedAvg
from fedcollm.federation.wire import payload_bytes, to_record
from fedcollm.recipes.fedcollm import run_fedcollm


def _reply(node: int, arrays, n: int) -> Message:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    ask = Message(content=RecordDict(), dst_node_id=node, message_type="train")
    return Message(RecordDict({"arrays": to_record(arrays), "metrics": MetricRecord({"num-examples": n})}),
                   reply_to=ask)


def _adapter(rng, scale=1.0):
    return [("a.lora_A.weight", rng.normal(size=(4, 6)).astype(np.float32) * scale),
            ("a.lora_B.weight", rng.normal(size=(6, 4)).astype(np.float32) * scale)]


def _unpacked(record, like):
    from fedcollm.federation.wire import from_record, layout_of

    return dict(from_record(record, layout_of(like)))


def test_aggregate_is_the_sample_weighted_mean():
    rng = np.random.default_rng(0)
    updates = [(_adapter(rng), n) for n in (10, 30, 60)]
    strategy = CheckedFedAvg(_adapter(rng), min_available_nodes=3, min_train_nodes=3)
    agg, _ = strategy.aggregate_train(1, [_reply(i + 1, a, n) for i, (a, n) in enumerate(updates)])
    for j, (key, _) in enumerate(updates[0][0]):
        want = sum(a[j][1] * n for a, n in updates) / 100
        np.testing.assert_allclose(_unpacked(agg, updates[0][0])[key], want, rtol=1e-6, atol=1e-7)


def test_the_aggregate_does_not_depend_on_the_order_the_replies_arrive_in():
    import itertools

    rng = np.random.default_rng(6)
    updates = [(_adapter(rng), n) for n in (10, 30, 60, 20)]
    means = set()
    for order in itertools.permutations(range(4)):
        strategy = CheckedFedAvg(_adapter(rng), min_available_nodes=4, min_train_nodes=4)
        agg, _ = strategy.aggregate_train(1, [_reply(i + 1, *updates[i]) for i in order])
        means.add(b"".join(v.tobytes() for _, v in _unpacked(agg, updates[0][0]).items()))
    assert len(means) == 1  # float32 sums depend on their order: the gate fixes one from the updates alone


def test_unit_weights_average_every_client_the_same_and_a_reply_needs_its_weight():
    rng = np.random.default_rng(4)
    updates = [(_adapter(rng), n) for n in (10, 30, 60)]
    strategy = CheckedFedAvg(_adapter(rng), weight=lambda n: 1, min_available_nodes=3, min_train_nodes=2)
    replies = [_reply(i + 1, a, n) for i, (a, n) in enumerate(updates)]
    ask = Message(content=RecordDict(), dst_node_id=4, message_type="train")
    replies.append(Message(RecordDict({"arrays": to_record(_adapter(rng))}), reply_to=ask))  # no metrics: no weight
    agg, _ = strategy.aggregate_train(1, replies)
    for j, (key, _) in enumerate(updates[0][0]):
        want = sum(a[j][1] for a, _ in updates) / 3  # not the 10/30/60-weighted mean
        np.testing.assert_allclose(_unpacked(agg, updates[0][0])[key], want, rtol=1e-6, atol=1e-7)
    assert strategy.accepted == [1, 2, 3]
    assert strategy.rejected == [(4, "the reply needs one MetricRecord with num-examples")]


def test_a_round_trains_exactly_the_nodes_found_online_without_waiting_for_more():
    from flwr.app import ConfigRecord

    from fedcollm.config import load_config
    from fedcollm.federation.aggregation import PlainAggregation
    from fedcollm.federation.privacy import PrivacyPolicy
    from fedcollm.federation.transport import MeteredGrid

    class GoneGrid:  # both nodes dropped right after the server saw them online
        sent = []

        def push_messages(self, messages):
            self.sent += list(messages)
            return [str(i) for i, _ in enumerate(self.sent)]

        def pull_messages(self, message_ids):
            return []

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    grid = MeteredGrid(GoneGrid())
    cfg = load_config(None, [])
    plain = PlainAggregation(cfg, PrivacyPolicy.of(cfg, "simulation"))
    out = plain.run(3, grid, [5, 7], _adapter(np.random.default_rng(5)), ConfigRecord({}), timeout=1.0, seed=0)
    sent = grid._grid.sent
    assert [m.metadata.dst_node_id for m in sent] == [5, 7]  # Flower's sampler would wait here forever
    assert all(m.content["config"]["server-round"] == 3 for m in sent)
    assert out.theta is None and out.contributors == []
    assert [(d.node, d.stage) for d in out.dropped] == [(5, "train"), (7, "train")]


class Listing:
    """A Grid's node listing as a SuperLink gives it over time: each call the next (node id, status) list."""

    def __init__(self, *listings):
        self.listings, self.calls = listings, 0

    def get_nodes(self):
        from types import SimpleNamespace

        listing = self.listings[min(self.calls, len(self.listings) - 1)]
        self.calls += 1
        return [SimpleNamespace(node_id=n, status=s) for n, s in listing]


def test_online_nodes_are_the_listed_ones_alive():
    from fedcollm.federation.transport import online_nodes

    grid = Listing([(9, "online"), (3, "offline"), (5, ""), (7, "unregistered"), (1, "online")])
    assert online_nodes(grid) == [1, 5, 9]  # simulated nodes carry no status: always there


def test_the_in_process_grid_lists_and_answers_as_a_superlink_does(monkeypatch):
    """The harness the in-process tests run on: ``get_node_ids``/``get_nodes`` list every node but those gone
    (a deployment node carries its status), a gone node never replies (the metered grid names it after its
    timeout), the others answer through the ClientApp."""
    from flwr.app import Message, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.supercore.task_identity import TaskIdentity
    from inprocess import SUPERLINK_NODE_ID, InProcessGrid

    from fedcollm.federation.transport import MeteredGrid, online_nodes

    # as in a ServerApp's process (the properties raise while unset, so their stores are patched)
    for name, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", SUPERLINK_NODE_ID)):
        monkeypatch.setattr(TaskIdentity, name, value)
    app = ClientApp()

    @app.query()
    def echo(msg, context):
        return Message(RecordDict(), reply_to=msg)

    grid = InProcessGrid(app, num_nodes=3, status="online")
    nodes = sorted(grid.get_node_ids())
    assert len(nodes) == 3 and online_nodes(grid) == nodes
    grid.gone.add(nodes[1])
    assert online_nodes(grid) == [nodes[0], nodes[2]] and nodes[1] not in grid.get_node_ids()
    metered = MeteredGrid(grid)
    msgs = [grid.create_message(RecordDict(), "query", n, "g") for n in nodes]
    replies = metered.send_and_receive(msgs, timeout=0.1)
    assert sorted(r.metadata.src_node_id for r in replies) == [nodes[0], nodes[2]]
    assert list(metered.dropped) == [nodes[1]] and "no reply within 0.1 s" in metered.dropped[nodes[1]].reason


def test_connected_nodes_waits_for_all_then_goes_on_with_enough_or_says_who_is_missing(monkeypatch, caplog):
    from fedcollm.federation import transport

    clock = [0.0]
    monkeypatch.setattr(transport.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(transport.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    arriving = Listing([(1, "online")], [(1, "online"), (2, "online")], [(1, "online"), (2, "online"), (3, "online")])
    assert transport.connected_nodes(arriving, want=3, at_least=2, wait_s=60) == [1, 2, 3]
    assert arriving.calls == 3 and clock[0] < 60  # it returned as soon as all were there
    clock[0] = 0.0
    two = Listing([(1, "online"), (2, "online"), (3, "offline")])
    assert transport.connected_nodes(two, want=3, at_least=2, wait_s=10) == [1, 2]
    assert clock[0] >= 10 and "2 of 3 clients connected after 10 s" in caplog.text
    clock[0] = 0.0
    with pytest.raises(RuntimeError, match=r"only 1 clients connected within 10 s; federation.min_clients is 2"):
        transport.connected_nodes(Listing([(1, "online")]), want=3, at_least=2, wait_s=10)


@pytest.mark.parametrize("corrupt,reason", [
    (lambda a: [(a[0][0], np.full_like(a[0][1], np.nan)), a[1]], "NaN or Inf"),
    (lambda a: [a[0]], "adapter layout differs"),
    (lambda a: [a[0], (a[1][0], a[1][1][:3])], "adapter layout differs"),
    (lambda a: [(k, v * 1000) for k, v in a], "more than 10× the round's median"),
])
def test_bad_update_is_rejected_and_the_round_goes_on(corrupt, reason, caplog):
    rng = np.random.default_rng(1)
    good = [_adapter(rng), _adapter(rng)]
    strategy = CheckedFedAvg(_adapter(rng), min_available_nodes=3, min_train_nodes=2)
    replies = [_reply(1, good[0], 10), _reply(2, good[1], 10), _reply(3, corrupt(_adapter(rng)), 10)]
    agg, _ = strategy.aggregate_train(4, replies)
    want = (good[0][0][1] + good[1][0][1]) / 2
    np.testing.assert_allclose(_unpacked(agg, good[0])["a.lora_A.weight"], want, rtol=1e-6, atol=1e-7)
    assert len(strategy.rejected) == 1 and strategy.rejected[0][0] == 3 and reason in strategy.rejected[0][1]
    assert "rejected update from node 3" in caplog.text


def test_absolute_norm_cap_rejects_every_update_above_it():
    rng = np.random.default_rng(3)
    ref = _adapter(rng)
    near = [(k, v + 0.01) for k, v in ref]  # delta norm 0.01 * sqrt(48) ≈ 0.07
    far = [(k, v + 1.0) for k, v in ref]  # ≈ 6.9
    strategy = CheckedFedAvg(ref, max_update_norm=1.0, outlier_factor=None, min_available_nodes=2,
                             min_train_nodes=2)
    agg, _ = strategy.aggregate_train(1, [_reply(1, near, 5), _reply(2, far, 5)])
    np.testing.assert_allclose(_unpacked(agg, ref)["a.lora_A.weight"], near[0][1], rtol=1e-6)
    assert [n for n, _ in strategy.rejected] == [2] and "exceeds max_update_norm" in strategy.rejected[0][1]
    assert strategy.norms[1] == pytest.approx(0.01 * np.sqrt(48), rel=1e-4)


def test_payload_bytes_counts_the_adapter_and_a_fixed_envelope():
    small, big = _adapter(np.random.default_rng(2)), _adapter(np.random.default_rng(2), 1.0) * 10
    big = [(f"{k}.{i}", v) for i, (k, v) in enumerate(big)]
    raw = {n: sum(v.nbytes for _, v in a) for n, a in (("small", small), ("big", big))}
    got = {n: payload_bytes(RecordDict({"arrays": to_record(a)})) for n, a in (("small", small), ("big", big))}
    assert raw["small"] < got["small"] <= raw["small"] + 1000  # the records' and the array's object headers
    assert abs((got["big"] - got["small"]) - (raw["big"] - raw["small"])) <= 16  # θ travels as one packed array


def _cfg(tiny_models, data_dir, tmp_path, name, rounds, **extra):
    overrides = [f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}",
                 "precision=fp32", f"output_dir={tmp_path}", f"run_name={name}", f"federation.rounds={rounds}",
                 "federation.num_clients=3", "eval.limit=6", "kd.top_k=16", "llm.lr=0.01", "slm.lr=0.01",
                 *[f"{k}={v}" for k, v in extra.items()]]
    return load_config(None, overrides)


def _adapters(run_dir, t):
    base = run_dir / "rounds" / f"{t:03d}"
    return {w: load_file(str(base / w / "adapter_model.safetensors")) for w in ("theta", "omega")}


def test_a_run_trains_both_adapters_and_a_resumed_run_goes_on_as_the_uninterrupted_one(tiny_models, data_dir, tmp_path):
    full = run_fedcollm(_cfg(tiny_models, data_dir, tmp_path, "full", 3), progress=False)
    records = full.metrics()
    assert [r.round for r in records] == [0, 1, 2, 3]
    first = records[1]
    assert len(first.clients["contributors"]) == 3 and not first.clients["dropped"]
    # one worker served all clients and loaded the SLM base once for every round (adapters swapped, base shared)
    later = records[2].clients["contributors"] + records[3].clients["contributors"]
    assert {c["slm-loads-in-worker"] for c in first.clients["contributors"] + later} == {1}
    assert first.kd["llm_kl"] > 0 and first.kd["slm_kl"] > 0
    r1, r2, r3 = (_adapters(full.path, t) for t in (1, 2, 3))
    for who in ("theta", "omega"):  # both adapters move every round
        assert any(not np.array_equal(r1[who][k], r2[who][k]) for k in r1[who])
    assert any(np.abs(v).sum() > 0 for k, v in r1["omega"].items() if "lora_B" in k)  # ω left its zero init
    assert (full.path / "report.md").is_file() and (full.path / "config.yaml").is_file()

    # stopped after round 2 (not 1: a resume that reloads the round before the last finished one is only
    # wrong from there), then resumed to 3
    part = run_fedcollm(_cfg(tiny_models, data_dir, tmp_path, "part", 2), progress=False)
    assert part.last_round() == 2
    resumed = run_fedcollm(None, resume=str(part.path), overrides=("federation.rounds=3",), progress=False)
    got = _adapters(resumed.path, 3)
    for who in ("theta", "omega"):  # round 3 continues from round 2's adapters and seeds: the same bits
        for k in r3[who]:
            np.testing.assert_array_equal(got[who][k], r3[who][k], err_msg=f"{who} {k}")
    def accs(recs):
        return [{role: {t: (m["acc"], m["acc_norm"]) for t, m in ev.items()} for role, ev in r.eval.items()}
                for r in recs]

    assert accs(resumed.metrics()) == accs(records)
    assert json.loads((resumed.path / "metrics.jsonl").read_text().splitlines()[-1])["round"] == 3


def test_clients_report_no_pid_or_host(tiny_models, data_dir, tmp_path):
    import os
    import socket

    run = run_fedcollm(_cfg(tiny_models, data_dir, tmp_path, "private", 1, method="fedavg",
                            **{"eval.every_round": "false"}), progress=False)
    (contributor, *_) = run.metrics()[1].clients["contributors"]
    mine = {str(os.getpid()), socket.gethostname()}  # the in-process clients run in this very process
    assert not any(k.endswith("pid") or "host" in k for k in contributor), contributor
    assert not mine & {str(v) for v in contributor.values()}, contributor


def test_a_dropped_clients_reason_keeps_why_and_loses_where():
    """What a dead Ray worker's error line says of its process and host stays out of the run's metrics."""
    from fedcollm.federation.transport import redact

    line = ("ray.exceptions.ActorDiedError: The actor died unexpectedly (pid=48213, ip=10.1.2.3, "
            "actor_id=9f8e7d, node_id=ab12) while talking to 192.168.7.9:9092")
    out = redact(line)
    assert out.startswith("ray.exceptions.ActorDiedError: The actor died unexpectedly")
    assert not any(s in out for s in ("48213", "10.1.2.3", "9f8e7d", "ab12", "192.168.7.9", "9092")), out
    oom = redact("ray.exceptions.OutOfMemoryError: Task was killed (pid: 5121, node_id: 6c1f2e, IP: 10.0.0.9)")
    assert not any(s in oom for s in ("5121", "6c1f2e", "10.0.0.9")), oom
    plain = "ValueError: client update of round 3 has NaN or Inf in base_model.lora_A (0.5 of 12 values)"
    assert redact(plain) == plain


def _tree(pid: int) -> list[int]:
    """Every process below ``pid``."""
    found, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        found += kids
        todo += kids
    return found


def _alive(pid: int) -> bool:
    from pathlib import Path

    try:  # a zombie has ended: only its parent has yet to read its status
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.flower
def test_a_sigkilled_run_leaves_no_process_and_resumes_to_the_uninterrupted_result_bit_for_bit(
        tiny_models, data_dir, tmp_path):
    """Through Flower's own processes, in a folder whose path holds quotes and spaces: a plain run; the same run with
    its launcher SIGKILLed in round 2 (nothing it started may outlive it: SuperLink, flwr run, the ServerApp,
    Ray); its resume, equal to the plain run."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from fedcollm.runlog import RunDir

    exe = str(Path(sys.executable).parent / "fedcollm")
    out = tmp_path / "it's a \"quoted\" folder"  # Flower's key=value run config could not carry this path
    common = [f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}",
              "precision=fp32", f"output_dir={out}", "federation.num_clients=2", "eval.limit=4", "kd.top_k=16",
              "federation.rounds=2", "llm.lr=0.01", "slm.lr=0.01"]
    plain = subprocess.run([exe, "run", *common, "run_name=plain"], capture_output=True, text=True, timeout=600)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert_reads_clean(plain.stdout, plain.stderr, out / "plain")

    proc = subprocess.Popen([exe, "run", *common, "run_name=killed"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    run = RunDir(out / "killed")
    deadline = time.time() + 600
    while run.last_round() < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    started = _tree(proc.pid)  # the SuperLink, flwr run, superexec, the ServerApp and Ray's processes under it
    names = b" ".join(_cmdline(p) for p in started)
    assert all(w in names for w in (b"flower-superlink", b"flwr\x00run", b"flwr-simulation", b"raylet")), names[:3000]
    os.kill(proc.pid, signal.SIGKILL)  # the launcher alone: no cleanup of its own can run
    proc.wait()
    assert run.last_round() == 1, "the kill should land after round 1 and before the run ends"
    deadline = time.time() + 30
    while any(map(_alive, started)) and time.time() < deadline:
        time.sleep(0.2)
    left = [_cmdline(p)[:80] for p in started if _alive(p)]
    assert not left, f"processes outlived their SIGKILLed launcher: {left}"

    done = subprocess.run([exe, "run", "--resume", str(run.path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r.round for r in run.metrics()] == [0, 1, 2]
    assert run.last_round() == 2 and not list((run.path / "rounds").glob("*.tmp"))
    assert_reads_clean(done.stdout, done.stderr, run.path)
    want, got = _adapters(out / "plain", 2), _adapters(run.path, 2)
    for who in ("theta", "omega"):  # each round in a process of its own: the same bits
        for k in want[who]:
            np.testing.assert_array_equal(got[who][k], want[who][k], err_msg=f"{who} {k}")


def assert_reads_clean(stdout: str, stderr: str, run_path) -> None:
    """What a user reads from `fedcollm run`: no deprecation or FutureWarning, no empty line of a client
    worker, the rounds' progress as they run, and the report's path last."""
    import re

    output = stdout + stderr
    assert "DEPRECATED" not in output and "FutureWarning" not in output, output[-3000:]
    assert not re.search(r"^\s*\(ClientAppActor pid=\d+\)\s*$", output, re.M), output[-3000:]
    assert "clients replied" in output  # the rounds are never silent
    last = [line for line in re.split(r"[\r\n]", stdout) if line.strip()][-1]
    assert last == f"report: {run_path / 'report.md'}", last
    assert (run_path / "report.md").exists()


def test_resume_redoes_a_round_logged_without_its_checkpoint_and_keeps_the_zero_shot_record(
        tiny_models, data_dir, tmp_path):
    from fedcollm.rounds import RoundRecord
    from fedcollm.runlog import RunDir

    run = RunDir.create(_cfg(tiny_models, data_dir, tmp_path, "early", 1))
    run.log(RoundRecord(0, extra={"marker": "zero-shot, kept"}))  # a key of another version: kept as it was
    run.log(RoundRecord(1, extra={"marker": "logged, then killed before rounds/001/DONE"}))
    (run.round_dir(1).with_name("001.tmp")).mkdir(parents=True)
    (run.round_dir(1).with_name("001.tmp") / "DONE").write_text("")  # a half-renamed checkpoint
    assert run.last_round() == 0
    run_fedcollm(None, resume=str(run.path), progress=False)
    records = run.metrics()
    assert [r.round for r in records] == [0, 1] and records[0].extra == {"marker": "zero-shot, kept"}
    assert "marker" not in records[1].extra and len(records[1].clients["contributors"]) == 3
    assert run.last_round() == 1


NPY_HEADER = 128  # a float32 Array travels as a .npy file: this header, then its values


def test_bf16_transfer_encoding_round_trips_to_nearest_bf16():
    import torch

    from fedcollm.federation.wire import from_record, is_bf16, layout_of

    rng = np.random.default_rng(4)
    arrays = [("a", rng.normal(size=(5, 7)).astype(np.float32)), ("b", np.array([0.0, -1.5, 3e-8], np.float32))]
    record = to_record(arrays, "bfloat16")
    assert is_bf16(record) and not is_bf16(to_record(arrays))
    for (k, v), (k2, back) in zip(arrays, from_record(record, layout_of(arrays))):
        want = torch.from_numpy(v).to(torch.bfloat16).float().numpy()  # torch rounds to nearest even too
        assert k == k2 and back.dtype == np.float32
        np.testing.assert_array_equal(back, want)
    raw = sum(v.nbytes for _, v in arrays)
    halved = payload_bytes(RecordDict({"arrays": to_record(arrays)})) - payload_bytes(RecordDict({"arrays": record}))
    assert raw / 2 <= halved <= raw / 2 + NPY_HEADER  # half the array's bytes (and no .npy header); the same envelope


def test_bf16_transfer_halves_the_bytes_and_keeps_the_aggregate(tiny_models, data_dir, tmp_path):
    runs = {}
    for dtype in ("float32", "bfloat16"):
        cfg = _cfg(tiny_models, data_dir, tmp_path, dtype, 1, method="fedavg", **{"federation.transfer_dtype": dtype,
                                                                                 "eval.every_round": "false"})
        runs[dtype] = run_fedcollm(cfg, progress=False)
    comm = {d: r.metrics()[-1].comm for d, r in runs.items()}
    from fedcollm.build import load_peft
    from fedcollm.models.lora import get_adapter_arrays

    values = sum(v.size for _, v in get_adapter_arrays(load_peft(cfg.slm, cfg, "slm")[0]))
    for way in ("sent", "received"):  # each message: θ's array at 2 bytes a value instead of 4; the rest unchanged
        saved = [f - b for f, b in zip(comm["float32"].per_client(way), comm["bfloat16"].per_client(way))]
        assert all(2 * values <= x <= 2 * values + NPY_HEADER for x in saved), (way, saved, values)
    a, b = (load_file(str(r.path / "rounds" / "001" / "theta" / "adapter_model.safetensors")) for r in runs.values())
    theta0 = dict(get_adapter_arrays(load_peft(cfg.slm, cfg, "slm")[0]))
    step = np.sqrt(sum(np.sum((a[k] - theta0[k]) ** 2) for k in a))
    gap = np.sqrt(sum(np.sum((b[k] - a[k]) ** 2) for k in a))
    assert gap < 0.1 * step, (gap, step)  # bf16 rounding moves the round's aggregate by a small part of its step


def test_update_cache_gives_the_computed_updates_and_serves_a_run_that_differs_only_in_kd(
        tiny_models, data_dir, tmp_path):
    from fedcollm.runlog import RunDir

    cache = tmp_path / "cache"
    plain = run_fedcollm(_cfg(tiny_models, data_dir, tmp_path, "plain", 1), progress=False)
    cold = run_fedcollm(_cfg(tiny_models, data_dir, tmp_path, "cold", 1, **{"federation.update_cache": cache}),
                        progress=False)
    theta = {name: load_file(str(RunDir(r.path).round_dir(1) / "theta" / "adapter_model.safetensors"))
             for name, r in (("plain", plain), ("cold", cold))}
    for key, value in theta["plain"].items():  # memoizing changes nothing: the same θ^1 bit for bit
        np.testing.assert_array_equal(theta["cold"][key], value)
    entries = sorted(cache.glob("*.json"))
    assert len(entries) == 3  # one per client of round 1
    for entry in entries:  # mark what the cache holds, so a hit is visible in the next run's record
        saved = json.loads(entry.read_text())
        saved["metrics"]["loss"] = 123.0
        entry.write_text(json.dumps(saved))
    warm = run_fedcollm(_cfg(tiny_models, data_dir, tmp_path, "warm", 1, **{"federation.update_cache": cache,
                                                                           "kd.llm_weight": 0}), progress=False)
    contributors = warm.metrics()[-1].clients["contributors"]
    seconds = warm.metrics()[-1].seconds  # where the round's time went, phase by phase
    assert set(seconds) == {"clients", "kd", "train", "eval"} and seconds["clients"] + seconds["kd"] <= seconds["train"]
    assert [c["train-loss"] for c in contributors] == [123.0] * 3
    assert sorted(cache.glob("*.json")) == entries


@pytest.mark.parametrize("kind, message, raised, says", [
    ("fedcollm.config.ConfigError", "llm.lr must be > 0", "ConfigError", "llm.lr must be > 0"),
    ("fedcollm.runlog.RoundError", "round 2: 1 of 2 updates", "RoundError", "round 2: 1 of 2 updates"),
    ("builtins.MemoryError", "out of memory", "MemoryError", "out of memory"),
    ("numpy.linalg.LinAlgError", "singular", "RuntimeError", "numpy.linalg.LinAlgError: singular"),
    ("fedcollm.config.no_such_name", "x", "RuntimeError", "fedcollm.config.no_such_name: x"),
])
def test_the_serverapps_error_is_raised_again_in_the_caller_as_itself(tmp_path, kind, message, raised, says):
    from fedcollm.federation.server_app import FAILURE, raise_failure
    from fedcollm.runlog import RunDir

    run = RunDir(tmp_path)
    raise_failure(run)  # no failure recorded: nothing to raise
    (tmp_path / FAILURE).write_text(json.dumps({"type": kind, "message": message}))
    with pytest.raises(BaseException) as caught:
        raise_failure(run)
    assert type(caught.value).__name__ == raised and str(caught.value) == says
    assert not (tmp_path / FAILURE).exists()  # raised once: a resumed run starts clean


def test_the_serverapp_ends_when_its_launcher_is_gone():
    import subprocess
    import sys

    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    code = (f"import time; from fedcollm.federation.server_app import end_with; end_with({launcher.pid}); "
            "print('watching', flush=True); time.sleep(600)")
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "watching"
        assert server.poll() is None  # the launcher lives: so does the server
        launcher.kill()
        launcher.wait()
        assert server.wait(timeout=60) == 1  # ended by the watch, not by its own sleep
    finally:
        for p in (launcher, server):
            p.kill()
            p.wait()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc: Linux, as CI)."""
    from pathlib import Path

    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _cmdline(pid: int) -> bytes:
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return b""


@pytest.mark.flower
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])  # a scheduler's kill; Ctrl-C
def test_a_terminated_run_takes_its_flower_processes_with_it(tiny_models, data_dir, tmp_path, signame):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from fedcollm.runlog import RunDir

    exe = str(Path(sys.executable).parent / "fedcollm")
    proc = subprocess.Popen([exe, "run", f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}",
                             f"data_dir={data_dir}", "precision=fp32", f"output_dir={tmp_path}", "run_name=termed",
                             "federation.num_clients=2", "federation.rounds=50", "eval.limit=4", "kd.top_k=16"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            # a shell's background job inherits SIGINT ignored; a terminal's Ctrl-C does not
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run = RunDir(tmp_path / "termed")
    deadline = time.time() + 600
    while run.last_round() < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    started = _tree(proc.pid)  # the SuperLink, `flwr run`, Flower's ServerApp process and Ray's under it
    assert sum(any(w in _cmdline(p) for w in (b"flwr", b"flower")) for p in started) >= 3 and proc.poll() is None
    sig = getattr(signal, signame)
    os.kill(proc.pid, sig)
    assert proc.wait(timeout=120) == 128 + sig
    err = proc.stderr.read().decode()
    assert "Traceback" not in err, err[-2000:]
    assert ("fedcollm: terminated (SIGTERM)" if signame == "SIGTERM" else "fedcollm: interrupted (Ctrl-C)") in err
    deadline = time.time() + 60
    while any(map(_alive, started)) and time.time() < deadline:
        time.sleep(0.2)
    left = [_cmdline(p)[:80] for p in started if _alive(p)]
    assert not left, f"processes outlived their run: {left}"
    assert 1 <= run.last_round() < 50

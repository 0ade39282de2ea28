"""`fedcollm compare`: paired comparison of two saved results, from every kind of file we write."""

from __future__ import annotations

import hashlib
import json

import pytest

from fedcollm.cli import main
from fedcollm.data import DataError
from fedcollm.recipes.compare import compare_results, load_result


def _metrics(bits: str, ids: str = "q") -> dict:
    return {"acc": bits.count("1") / len(bits), "n": len(bits), "correct": bits,
            "ids_sha1": hashlib.sha1(ids.encode()).hexdigest()}


def _run_folder(path, llm: str, slm: str) -> None:
    path.mkdir()
    records = [{"round": 0, "eval": {}},
               {"round": 1, "eval": {"llm": {"arc_easy": _metrics("0" * 40)}, "slm": {"arc_easy": _metrics("0" * 40)}}},
               {"round": 2, "eval": {"llm": {"arc_easy": _metrics(llm), "openbookqa": _metrics(llm, "o")},
                                     "slm": {"arc_easy": _metrics(slm)}}},
               {"round": 3, "eval": {}}]  # a round that was not evaluated: the last evaluated one counts
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_run_folder_vs_method_file_pairs_roles_and_pools(tmp_path):
    a_bits = "1" * 30 + "0" * 10          # 75 %
    b_bits = "1" * 10 + "0" * 30          # 25 %: every question A gets right beyond B's is a discordant pair
    _run_folder(tmp_path / "run", a_bits, b_bits)
    method = {"llm": {"arc_easy": _metrics(b_bits), "openbookqa": _metrics(a_bits, "o")},
              "slm": {"arc_easy": _metrics(b_bits)}}
    (tmp_path / "m.json").write_text(json.dumps(method))
    a, ra = load_result(str(tmp_path / "run"))
    b, rb = load_result(str(tmp_path / "m.json"))
    assert ra == rb == ["llm", "slm"] and a["round"] == 2
    rows = compare_results(a, ra, b, rb)
    assert [(r.role, r.task) for r in rows] == [("llm", "arc_easy"), ("llm", "openbookqa"), ("llm", "all"),
                                                ("slm", "arc_easy")]  # SLM: one task, nothing to pool
    llm, same, pooled, slm = rows
    assert (llm.acc_a, llm.acc_b) == (0.75, 0.25)
    assert llm.stats.diff == pytest.approx(50.0) and llm.stats.lo > 0 and llm.stats.p < 1e-5
    assert same.stats.diff == 0.0 and same.stats.p == 1.0
    assert pooled.stats.n == 80 and pooled.stats.diff == pytest.approx(25.0) and pooled.stats.lo > 0
    assert slm.stats.diff == pytest.approx(0.0) and slm.stats.p == 1.0


def test_eval_file_role_pick_standalone_mean_and_different_questions(tmp_path):
    (tmp_path / "zs.json").write_text(json.dumps({"model": "m", "metrics": {"arc_easy": _metrics("1100"),
                                                                            "openbookqa": _metrics("10", "other")}}))
    clients = [{"arc_easy": _metrics("1000"), "openbookqa": _metrics("11")},
               {"arc_easy": _metrics("1110"), "openbookqa": _metrics("00")}]
    standalone = {"slm": {"arc_easy": {"acc": 0.5}, "openbookqa": {"acc": 0.5}}, "clients": clients}
    (tmp_path / "sa.json").write_text(json.dumps(standalone))
    zs, rz = load_result(str(tmp_path / "zs.json"))
    sa, rs = load_result(f"{tmp_path / 'sa.json'}:slm")
    assert rz == ["model"] and rs == ["slm"]
    rows = {r.task: r for r in compare_results(sa, rs, zs, rz)}
    assert rows["arc_easy"].role == "slm vs model"
    assert rows["arc_easy"].acc_a == pytest.approx(0.5) and rows["arc_easy"].stats.p is None  # a mean: no McNemar
    assert rows["openbookqa"].stats is None and "different questions" in rows["openbookqa"].note
    assert "all" not in rows  # one comparable task: nothing to pool


def _zero_shot_only(path) -> None:
    path.mkdir()
    (path / "metrics.jsonl").write_text(json.dumps({"round": 0, "eval": {"llm": {"arc_easy": _metrics("1")}}}) + "\n")


@pytest.mark.parametrize("make, spec, message", [
    (lambda p: None, "missing", "no such run folder"),
    (lambda p: (p / "d").mkdir(), "d", "without metrics.jsonl"),
    (lambda p: (p / "x.json").write_text("{"), "x.json", "not JSON"),
    (lambda p: (p / "x.json").write_text('{"llm": {}}'), "x.json:slm", "has no role 'slm'"),
    (lambda p: _zero_shot_only(p / "r"), "r", "no tuned round was evaluated yet"),
])
def test_bad_inputs_one_line(tmp_path, capsys, make, spec, message):
    make(tmp_path)
    with pytest.raises(DataError, match=message):
        load_result(str(tmp_path / spec))
    (tmp_path / "ok.json").write_text('{"llm": {}}')
    assert main(["compare", str(tmp_path / spec), str(tmp_path / "ok.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_cli_writes_rows(tmp_path, capsys):
    _run_folder(tmp_path / "run", "1" * 20, "0" * 20)
    out = tmp_path / "cmp.json"
    assert main(["compare", f"{tmp_path / 'run'}:llm", f"{tmp_path / 'run'}:slm", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    rows = saved["rows"]
    assert saved["a_round"] == saved["b_round"] == 2
    assert rows[0]["model"] == "llm vs slm" and rows[0]["diff"] == pytest.approx(100.0)
    assert "A better" in capsys.readouterr().out


def _seed_result(bits: dict[str, str]) -> dict:
    return {"slm": {t: {"acc": s.count("1") / len(s), "correct": s, "ids_sha1": f"ids-{t}-{len(s)}", "n": len(s)}
                    for t, s in bits.items()}}


def test_several_seeds_of_one_method_are_paired_seed_by_seed(tmp_path, capsys):
    import json

    from fedcollm.cli import main
    from fedcollm.recipes.compare import load_results

    a = [_seed_result({"arc_easy": "1101", "openbookqa": "1110"}),
         _seed_result({"arc_easy": "1111", "openbookqa": "0110"})]
    b = [_seed_result({"arc_easy": "0101", "openbookqa": "1010"}),
         _seed_result({"arc_easy": "0111", "openbookqa": "0010"})]
    rows = {r.task: r for r in compare_results(a, ["slm"], b, ["slm"])}
    assert rows["arc_easy"].stats.seeds == 2 and rows["arc_easy"].stats.n == 4
    assert rows["arc_easy"].stats.diff == pytest.approx(100 * ((3 - 2) / 4 + (4 - 3) / 4) / 2)
    assert rows["all"].stats.diff == pytest.approx(100 * (12 - 8) / 16)  # pooled over tasks and seeds
    ref = _seed_result({"arc_easy": "0000", "openbookqa": "0000"})  # one reference for every seed
    assert {r.task: r.stats.seeds for r in compare_results(a, ["slm"], ref, ["slm"])}["all"] == 2
    with pytest.raises(DataError, match="2 seeds against 3"):
        compare_results(a, ["slm"], [ref, ref, ref], ["slm"])
    other = [a[0], _seed_result({"arc_easy": "11011", "openbookqa": "1110"})]  # seed 2 scored other questions
    notes = {r.task: r.note for r in compare_results(other, ["slm"], b, ["slm"])}
    assert notes["arc_easy"] == "not comparable: different questions"
    for i, (x, y) in enumerate(zip(a, b)):
        (tmp_path / f"a{i}.json").write_text(json.dumps(x))
        (tmp_path / f"b{i}.json").write_text(json.dumps(y))
    assert len(load_results(f"{tmp_path / 'a0.json'},{tmp_path / 'a1.json'}")[0]) == 2
    out = tmp_path / "cmp.json"
    assert main(["compare", f"{tmp_path / 'a0.json'},{tmp_path / 'a1.json'}",
                 f"{tmp_path / 'b0.json'},{tmp_path / 'b1.json'}", "--out", str(out)]) == 0
    assert "2 seeds and questions" in " ".join(capsys.readouterr().out.split())  # the title wraps to the width
    saved = {r["task"]: r for r in json.loads(out.read_text())["rows"]}
    assert saved["all"]["seeds"] == 2 and saved["all"]["diff"] == pytest.approx(100 * 4 / 16)

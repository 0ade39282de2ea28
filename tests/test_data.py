from __future__ import annotations

import json

import pytest

from fedcollm.data import (
    ALL_TASKS,
    DataError,
    context_of,
    load_eval,
    load_split,
    mc_request,
    split_train,
    training_pair,
)


def test_every_task_loads_in_one_schema(data_dir):
    for task in ALL_TASKS:
        qs = load_eval(task, data_dir)
        assert qs and all(q.task == task for q in qs)
        for q in qs:
            assert 0 <= q.answer < len(q.choices) == len(q.labels)


def test_digit_labels_are_accepted(data_dir):
    qs = load_split("arc_easy", "train", data_dir)
    digit = [q for q in qs if q.labels[0] == "1"]
    assert digit, "fixture should contain digit-labelled ARC questions"
    assert all(q.labels[q.answer].isdigit() for q in digit)


def test_prompts_follow_lm_eval(data_dir):
    arc = load_eval("arc_challenge", data_dir)[0]
    assert context_of(arc) == f"Question: {arc.question}\nAnswer:"
    obqa = load_eval("openbookqa", data_dir)[0]
    assert context_of(obqa) == obqa.question
    csqa = load_eval("commonsense_qa", data_dir)[0]
    req = mc_request(csqa)
    assert req.choices == ("A", "B", "C", "D", "E")
    assert req.context.splitlines()[1] == f"A. {csqa.choices[0]}" and req.context.endswith("\nAnswer:")
    prompt, answer = training_pair(arc)
    assert prompt == context_of(arc) and answer == " " + arc.choices[arc.answer]


def test_malformed_line_names_file_and_line(tmp_path):
    d = tmp_path / "arc_easy"
    d.mkdir()
    good = {"id": "x", "question": {"stem": "s", "choices": [{"label": "A", "text": "t"}]}, "answerKey": "A"}
    (d / "test.jsonl").write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(DataError, match=r"test.jsonl:2: malformed JSON"):
        load_eval("arc_easy", tmp_path)
    (d / "test.jsonl").write_text(json.dumps({**good, "answerKey": "Z"}) + "\n")
    with pytest.raises(DataError, match=r"test.jsonl:1: not a multiple-choice record"):
        load_eval("arc_easy", tmp_path)


def test_missing_data_dir_says_what_to_set(tmp_path):
    with pytest.raises(DataError, match="FEDCOLLM_DATA_DIR"):
        load_eval("arc_easy", tmp_path / "nope")
    with pytest.raises(DataError, match="missing data file"):
        load_eval("arc_easy", tmp_path)
    with pytest.raises(DataError, match="unknown task"):
        load_eval("mmlu", tmp_path)


def _ids(qs):
    return [q.id for q in qs]


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_splits_disjoint_deterministic_sized(data_dir, partition):
    per_task = {t: load_split(t, "train", data_dir) for t in ("arc_easy", "openbookqa")}
    n = sum(len(v) for v in per_task.values())
    a = split_train(per_task, 4, aux_fraction=0.25, partition=partition, alpha=0.3, seed=7)
    b = split_train(per_task, 4, aux_fraction=0.25, partition=partition, alpha=0.3, seed=7)
    c = split_train(per_task, 4, aux_fraction=0.25, partition=partition, alpha=0.3, seed=8)
    assert _ids(a.aux) == _ids(b.aux) and [_ids(x) for x in a.clients] == [_ids(x) for x in b.clients]
    assert [_ids(x) for x in a.clients] != [_ids(x) for x in c.clients]
    everything = _ids(a.aux) + [i for cl in a.clients for i in _ids(cl)]
    assert len(everything) == len(set(everything)) == n  # disjoint and complete
    assert len(a.aux) == sum(round(0.25 * len(v)) for v in per_task.values())
    assert {q.task for q in a.aux} == {"arc_easy", "openbookqa"}  # D^a covers every task
    assert all(len(cl) > 0 for cl in a.clients)
    if partition == "iid":
        sizes = [len(cl) for cl in a.clients]
        assert max(sizes) - min(sizes) <= 1


def test_client_size_and_aux_size_caps(data_dir):
    per_task = {"arc_easy": load_split("arc_easy", "train", data_dir)}
    s = split_train(per_task, 3, aux_size=10, client_size=5, seed=0)
    assert len(s.aux) == 10 and [len(c) for c in s.clients] == [5, 5, 5]


def test_train_size_subsamples_each_task_and_keeps_one_to_four(data_dir):
    """cpu-paper's data: each task's train split cut to ``train_size`` uniformly, then 20 % of *that* kept
    as D^a, so D^a : ΣD^k is 1 : 4 per task; the questions are the split's own, disjoint, seed-stable."""
    tasks = ("arc_easy", "openbookqa")
    per_task = {t: load_split(t, "train", data_dir) for t in tasks}
    assert all(len(qs) > 20 for qs in per_task.values())
    s = split_train(per_task, 4, aux_fraction=0.2, seed=3, train_size=20)
    dealt = [q for c in s.clients for q in c]
    for t in tasks:
        ids = {q.id for q in per_task[t]}
        aux = [q for q in s.aux if q.task == t]
        mine = [q for q in dealt if q.task == t]
        assert (len(aux), len(mine)) == (4, 16)
        assert {q.id for q in aux + mine} <= ids
    every = [q.id for q in s.aux + dealt]
    assert len(every) == len(set(every)) == 40
    again = split_train(per_task, 4, aux_fraction=0.2, seed=3, train_size=20)
    assert [q.id for q in again.aux] == [q.id for q in s.aux]
    other = split_train(per_task, 4, aux_fraction=0.2, seed=4, train_size=20)
    assert {q.id for q in other.aux} != {q.id for q in s.aux}  # a uniform draw, not the file's first 20
    full = split_train(per_task, 4, aux_fraction=0.2, seed=3)  # None: every question, as before
    assert len(full.aux) + sum(map(len, full.clients)) == sum(map(len, per_task.values()))


def test_dev_limit_applies_on_dev_only(data_dir):
    from fedcollm.build import eval_questions
    from fedcollm.config import load_config

    base = [f"data_dir={data_dir}", "tasks=arc_easy", "eval.limit=7", "eval.dev_limit=3"]
    assert len(eval_questions(load_config(None, [*base, "eval.split=dev"]))["arc_easy"]) == 3
    assert len(eval_questions(load_config(None, [*base, "eval.split=test"]))["arc_easy"]) == 7


def test_too_many_clients_is_a_clear_error(data_dir):
    per_task = {"arc_easy": load_split("arc_easy", "train", data_dir)[:5]}
    with pytest.raises(DataError, match="cannot be dealt to 10 clients"):
        split_train(per_task, 10, aux_fraction=0.2)


def test_exported_client_files_hold_exactly_each_split(data_dir, tmp_path):
    from fedcollm.build import export_splits, load_splits
    from fedcollm.config import load_config
    from fedcollm.data.schema import read_jsonl

    cfg = load_config(None, [f"data_dir={data_dir}", "tasks=arc_easy,commonsense_qa", "federation.num_clients=3"])
    paths = export_splits(cfg, tmp_path / "split")
    splits = load_splits(cfg)
    for path, qs in zip(paths, splits.clients, strict=True):
        assert read_jsonl(path, None) == qs  # same questions, tasks, labels and answers
    assert read_jsonl(tmp_path / "split" / "server-aux.jsonl", None) == splits.aux
    (tmp_path / "bad.jsonl").write_text('{"id": "x", "question": {"stem": "s", "choices": []}, "answerKey": "A"}\n')
    with pytest.raises(DataError, match="bad.jsonl:1: record names no known task"):
        read_jsonl(tmp_path / "bad.jsonl", None)


def test_dev_splits_are_official_validation_or_a_fixed_carve_of_train_disjoint_from_everything(data_dir):
    from fedcollm.data import dev_split, load_eval, load_split
    from fedcollm.data.schema import _read_split

    assert dev_split("arc_easy") == "validation" and dev_split("commonsense_qa") == "dev"
    assert [q.id for q in load_eval("arc_easy", data_dir, split="dev")] == \
        [q.id for q in load_split("arc_easy", "validation", data_dir)]
    raw = _read_split("commonsense_qa", "train", data_dir)
    dev = load_eval("commonsense_qa", data_dir, split="dev")
    train, test = load_split("commonsense_qa", "train", data_dir), load_eval("commonsense_qa", data_dir)
    assert len(dev) == round(0.1 * len(raw)) and len(dev) + len(train) == len(raw)
    assert not {q.id for q in dev} & {q.id for q in train} and not {q.id for q in dev} & {q.id for q in test}
    assert [q.id for q in load_eval("commonsense_qa", data_dir, split="dev")] == [q.id for q in dev]  # fixed


def test_split_seed_keeps_the_questions_while_seed_changes_the_training(tiny_models, data_dir):
    import numpy as np

    from fedcollm.build import load_peft, load_splits
    from fedcollm.config import load_config
    from fedcollm.models.lora import get_adapter_arrays

    def cfg(*extra):
        return load_config(None, [f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}", "precision=fp32", *extra])

    def ids(c):
        s = load_splits(c)
        return [q.id for q in s.aux], [[q.id for q in k] for k in s.clients]

    assert ids(cfg("seed=1", "split_seed=0")) == ids(cfg("seed=0")) != ids(cfg("seed=1"))
    a, b = (get_adapter_arrays(load_peft(c.slm, c, "slm")[0]) for c in (cfg("seed=0"), cfg("seed=1", "split_seed=0")))
    assert any(not np.array_equal(x, y) for (_, x), (_, y) in zip(a, b))  # another LoRA init

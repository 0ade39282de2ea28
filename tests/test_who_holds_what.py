"""Who holds what: the server's D^a from other tasks than the clients' (``data.aux_tasks``), unlabeled D^a questions
that get KD terms only (``data.aux_unlabeled``), and each client's own file (``data.client_files``), which no
other client's code and no server code ever opens."""

from __future__ import annotations

import hashlib
import json
import re
import sys

import pytest
import torch
from conftest import write_data_dir

from fedcollm.build import client_data, load_aux, load_splits
from fedcollm.config import ConfigError, load_config
from fedcollm.data import load_split, split_train, training_pair
from fedcollm.data.schema import write_jsonl
from fedcollm.evaluate import make_choice_batches
from fedcollm.updates import Transfer, choice_kd_losses

TASKS = ("arc_easy", "openbookqa", "commonsense_qa")


@pytest.fixture(scope="module")
def per_task(data_dir):
    return {t: load_split(t, "train", data_dir) for t in TASKS}


def ids(qs):
    return {(q.task, q.id) for q in qs}


def test_by_default_the_split_is_what_it_was(per_task):
    """Who-holds-what left the default split as it was: the digest is that of the split ``partition.py`` of
    594afdf (before ``aux_tasks`` existed) made of the fixture's questions, and the explicit defaults equal it."""
    a = split_train(per_task, 3, aux_fraction=0.25, seed=5)
    b = split_train(per_task, 3, aux_fraction=0.25, seed=5, aux_tasks=TASKS, client_tasks=TASKS, unlabeled=())
    assert a == b
    text = "|".join(",".join(f"{q.task}/{q.id}" for q in part) for part in [a.aux, *a.clients])
    assert hashlib.sha1(text.encode()).hexdigest() == "1cbb3dc77be237dc2827bef39d27a5456b0f9e13"


def test_d_a_from_other_tasks_and_clients_keep_theirs_whole(per_task):
    s = split_train(per_task, 3, aux_fraction=0.25, seed=5, aux_tasks=("arc_easy", "openbookqa"),
                    client_tasks=("arc_easy", "commonsense_qa"))
    aux, pool = ids(s.aux), ids([q for c in s.clients for q in c])
    assert {t for t, _ in aux} == {"arc_easy", "openbookqa"} and {t for t, _ in pool} == {"arc_easy", "commonsense_qa"}
    assert not aux & pool
    obqa = [q for q in s.aux if q.task == "openbookqa"]  # the server's alone: a cut of it, as for any D^a task
    assert ids(obqa) <= ids(per_task["openbookqa"]) and len(obqa) == round(0.25 * len(per_task["openbookqa"]))
    csqa = {q.id for c in s.clients for q in c if q.task == "commonsense_qa"}
    assert csqa == {q.id for q in per_task["commonsense_qa"]}  # the clients' alone: whole
    n_arc = len(per_task["arc_easy"])
    assert sum(q.task == "arc_easy" for q in s.aux) == round(0.25 * n_arc)  # cut as by default where both hold it


def test_unlabeled_d_a_has_no_answer_anywhere(per_task, tmp_path):
    s = split_train(per_task, 3, aux_fraction=0.25, seed=5, unlabeled=("commonsense_qa",))
    unl = [q for q in s.aux if q.task == "commonsense_qa"]
    assert unl and all(q.answer is None for q in unl)
    assert all(q.answer is not None for q in s.aux if q.task != "commonsense_qa")
    assert all(q.answer is not None for c in s.clients for q in c)
    with pytest.raises(ValueError, match="is unlabeled: it has no answer to train on"):
        training_pair(unl[0])
    write_jsonl(tmp_path / "aux.jsonl", unl[:2])
    assert all(json.loads(line)["answerKey"] is None for line in (tmp_path / "aux.jsonl").read_text().splitlines())


@pytest.mark.parametrize("overrides,needle", [
    (["data.aux_unlabeled=[openbookqa]"], "data.aux_unlabeled names openbookqa, which D^a is not cut from"),
    (["data.aux_unlabeled=[arc_easy]"], "data.aux_unlabeled needs kd.target=choices"),
    (["data.client_files=[a.jsonl]"], "data.client_files holds 1 files for federation.num_clients=4"),
    (["data.aux_tasks=[]"], "data.aux_tasks is empty"),
])
def test_who_holds_what_is_checked_in_one_line(overrides, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(None, overrides)


def test_an_unlabeled_question_gets_kd_terms_and_no_ce(tiny_models, data_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fedcollm.evaluate import choice_scores

    tok = AutoTokenizer.from_pretrained(tiny_models["slm"])
    llm = AutoModelForCausalLM.from_pretrained(tiny_models["llm"], dtype=torch.float32)
    slm = AutoModelForCausalLM.from_pretrained(tiny_models["slm"], dtype=torch.float32)
    qs = load_split("arc_easy", "train", data_dir)[:4]
    unl = [q.__class__(**{**q.__dict__, "answer": None}) for q in qs]
    spec = Transfer(llm_weight=1.0, slm_weight=1.0, target="choices")

    def losses(questions, spec=spec):
        (cb,) = make_choice_batches(tok, questions, 4, 128, seed=0)
        return cb, choice_kd_losses(choice_scores(llm, cb), choice_scores(slm, cb), cb, spec)

    cb, out = losses(unl)
    assert not bool(cb.labeled.any())
    assert float(out["slm_ce"]) == 0.0 and float(out["llm_ce"]) == 0.0 and float(out["slm_kl"]) > 0
    out["loss"].backward()  # the KD terms alone still train: a gradient reaches the student
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in slm.parameters())
    slm.zero_grad()
    # half labeled: the CE is the labeled half's mean, as if the unlabeled questions were not there
    _, mixed = losses(qs[:2] + unl[2:])
    _, labeled = losses(qs[:2])
    assert float(mixed["slm_ce"]) == pytest.approx(float(labeled["slm_ce"]), rel=1e-5)
    # selection: no evidence that the SLM is right on an unlabeled question, so the LLM never distils it
    _, sel = losses(unl, Transfer(llm_weight=1.0, slm_weight=1.0, target="choices", select="greater"))
    assert float(sel["llm_kd_frac"]) == 0.0 and float(sel["slm_kd_frac"]) == 1.0


def _cfg(tiny_models, data, tmp_path, *extra):
    return load_config(None, [
        f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data}", "precision=fp32",
        f"output_dir={tmp_path / 'runs'}", "federation.rounds=1", "federation.num_clients=2", "eval.limit=4",
        "eval.every_round=false", "kd.top_k=16", *extra])


def test_each_client_opens_its_own_file_and_nobody_else_does(tiny_models, tmp_path, monkeypatch):
    """The seal of the clients' files: every file open of the run is recorded with whose code ran it (the client
    whose ClientApp was running, or the server's code), through an audit hook."""
    import inprocess

    import fedcollm.recipes.fedcollm as recipe
    from fedcollm.recipes.fedcollm import run_fedcollm

    data = write_data_dir(tmp_path / "data", n_train=40, n_eval=8)
    files = []
    for k in range(2):  # each client's own questions, in the per-client layout (as split-data writes them)
        path = tmp_path / f"site-{k}" / "mine.jsonl"
        write_jsonl(path, load_split("arc_easy", "train", data)[k * 10:(k + 1) * 10])
        files.append(str(path.resolve()))
    cfg = _cfg(tiny_models, data, tmp_path, "run_name=own-files", f"data.client_files=[{','.join(files)}]",
               "data.aux_tasks=[openbookqa]", "tasks=[arc_easy]")
    assert client_data(cfg, 1) == load_split("arc_easy", "train", data)[10:20]
    assert {q.task for q in load_aux(cfg)} == {"openbookqa"}

    grids, opened = [], []

    def hook(event, args):
        if event == "open" and grids and isinstance(args[0], str) and args[0] in files:
            opened.append((files.index(args[0]), grids[0].at))

    sys.addaudithook(hook)  # hooks stay for the process: this one records only while a grid of this test exists
    monkeypatch.setattr(recipe, "simulate", lambda cfg, run, progress=True, app_dir=None: inprocess.simulate_in_process(
        cfg, run, progress, app_dir, grid_hook=lambda g: grids.append(g) or g))
    try:
        run = run_fedcollm(cfg, progress=False)
    finally:
        grids_done = list(grids)
        grids.clear()
    assert grids_done and run.metrics()[-1].round == 1
    assert {k for k, _ in opened} == {0, 1}, opened  # each client read its file
    assert all(at == k for k, at in opened), opened  # ... only while its own ClientApp ran; never the server
    # the server's side of the split reads no client file either (D^a and the round's settings)
    opened.clear()
    grids.append(grids_done[0])
    grids[0].at = None
    try:
        load_aux(cfg)
    finally:
        grids.clear()
    assert opened == []
    assert [len(c) for c in load_splits(cfg).clients] == [10, 10]  # what pools all data (baselines) reads them

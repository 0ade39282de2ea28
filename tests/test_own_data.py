"""Bring your own data: a folder of JSONL files in the plain schema (``data/jsonl_task.py``) is a task like the
built-in four: it trains, it is scored, it is refused line by line when a line cannot be a question."""

from __future__ import annotations

import json
import random

import pytest

from fedcollm.config import load_config
from fedcollm.data import DataError, load_eval, load_split, mc_request
from fedcollm.data.schema import read_jsonl, write_jsonl

WORDS = "drug dose fever pain liver kidney heart blood lung skin bone nerve".split()


def write_task(folder, n_train=40, n_dev=8, n_test=8, seed=0, dev=True):
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev if dev else 0), ("test", n_test)):
        if not n:
            continue
        lines = []
        for i in range(n):
            k = rng.randint(2, 5)
            rec = {"id": f"{split}-{i}", "question": " ".join(rng.choice(WORDS) for _ in range(6)) + "?",
                   "choices": [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))) for _ in range(k)],
                   "answer": rng.randrange(k) if i % 2 else "ABCDE"[rng.randrange(k)]}
            if i % 3 == 0:
                rec["context"] = "A passage about " + rng.choice(WORDS) + "."
            lines.append(json.dumps(rec))
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_a_folder_of_jsonl_files_is_a_task_with_lm_evals_default_prompt(tmp_path):
    task = str(write_task(tmp_path / "med"))
    train, dev, test = load_split(task, "train"), load_eval(task, split="dev"), load_eval(task, split="test")
    assert (len(train), len(dev), len(test)) == (40, 8, 8) and {q.task for q in train} == {task}
    q = next(q for q in train if q.id == "train-1")  # an index answer, no context
    raw = json.loads((tmp_path / "med" / "train.jsonl").read_text().splitlines()[1])
    req = mc_request(q)
    assert req.context == f"Question: {raw['question']}\nAnswer:" and req.choices == tuple(raw["choices"])
    assert req.gold == raw["answer"] and req.delimiter == " "
    with_context = next(q for q in train if q.id == "train-0")  # a label answer and a context
    raw0 = json.loads((tmp_path / "med" / "train.jsonl").read_text().splitlines()[0])
    assert mc_request(with_context).context == f"{raw0['context']}\nQuestion: {raw0['question']}\nAnswer:"
    assert with_context.answer == "ABCDE".index(raw0["answer"])


def test_without_dev_jsonl_a_fixed_tenth_of_train_is_the_dev_set(tmp_path):
    task = str(write_task(tmp_path / "nodev", n_train=50, dev=False))
    dev, train = load_eval(task, split="dev"), load_split(task, "train")
    assert len(dev) == 5 and len(train) == 45 and not {q.id for q in dev} & {q.id for q in train}


def test_per_client_files_keep_the_rendered_prompt(tmp_path):
    task = str(write_task(tmp_path / "med"))
    qs = load_split(task, "train")[:5]
    write_jsonl(tmp_path / "client-0.jsonl", qs)
    assert read_jsonl(tmp_path / "client-0.jsonl", None) == qs


def test_a_run_on_the_users_task_trains_and_scores_it(tiny_models, tmp_path):
    from fedcollm.recipes.fedcollm import run_fedcollm

    task = str(write_task(tmp_path / "med"))
    cfg = load_config(None, [
        f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"tasks=[{task}]", "precision=fp32",
        f"output_dir={tmp_path / 'runs'}", "run_name=med", "federation.rounds=1", "federation.num_clients=2",
        "eval.split=dev", "kd.top_k=16"])
    run = run_fedcollm(cfg, progress=False)
    last = run.metrics()[-1]
    assert set(last.eval["llm"]) == {task} and last.eval["slm"][task]["n"] == 8
    assert "med" in (run.path / "report.md").read_text()  # the folder's name labels it in tables


BAD = {
    "no answer": ({"id": "x", "question": "q?", "choices": ["a", "b"]}, "no 'answer'"),
    "answer out of range": ({"id": "x", "question": "q?", "choices": ["a", "b"], "answer": 2}, "out of range"),
    "answer of no label": ({"id": "x", "question": "q?", "choices": ["a", "b"], "answer": "C"}, "none of the labels"),
    "one choice": ({"id": "x", "question": "q?", "choices": ["a"], "answer": 0}, "needs at least 2"),
    "empty question": ({"id": "x", "question": " ", "choices": ["a", "b"], "answer": 0}, "the question is empty"),
    "null question": ({"id": "x", "question": None, "choices": ["a", "b"], "answer": 0}, "the question is empty"),
    "choices not strings": ({"id": "x", "question": "q?", "choices": ["a", 2], "answer": 0}, "list of strings"),
    "duplicate id": ({"id": "train-0", "question": "q?", "choices": ["a", "b"], "answer": 0},
                     "id 'train-0' is already the question of line 1"),
    "not UTF-8": (b'{"id": "x", "question": "\xff?", "choices": ["a", "b"], "answer": 0}', "not UTF-8 text"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_line_is_named_by_file_and_line_exit_2_and_nothing_written(case, tiny_models, tmp_path, capsys):
    from fedcollm.cli import main

    task = write_task(tmp_path / "med")
    rec, needle = BAD[case]
    lines = (task / "train.jsonl").read_bytes().splitlines()
    lines.insert(2, rec if isinstance(rec, bytes) else json.dumps(rec).encode())
    (task / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    argv = ["run", f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"tasks=[{task}]",
            "precision=fp32", f"output_dir={tmp_path / 'runs'}", "run_name=r", "federation.num_clients=2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fedcollm: error: {task / 'train.jsonl'}:3: ") and needle in err and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_duplicate_ids_non_utf8_and_unknown_tasks_are_refused_in_one_line(tmp_path):
    task = write_task(tmp_path / "med")
    lines = (task / "test.jsonl").read_text().splitlines()
    (task / "test.jsonl").write_text("\n".join([*lines, lines[0]]) + "\n")
    with pytest.raises(DataError, match=r"test.jsonl:9: id 'test-0' is already the question of line 1"):
        load_eval(str(task), split="test")
    (task / "dev.jsonl").write_bytes(b'{"id": "d", "question": "\xff", "choices": ["a", "b"], "answer": 0}\n')
    with pytest.raises(DataError, match=r"dev.jsonl:1: not UTF-8 text"):
        load_eval(str(task), split="dev")
    from fedcollm.build import preflight

    with pytest.raises(DataError, match=r"unknown task 'no/such/folder' in tasks: neither a built-in task"):
        preflight(load_config(None, ["tasks=[no/such/folder]"]))


def test_the_folders_template_renders_every_prompt(tmp_path):
    task = write_task(tmp_path / "med")
    (task / "template.txt").write_text("Case: {context}\nAsked: {question}\nOptions:\n{choices}\nPick:\n")
    q = load_eval(str(task))[0]
    assert q.prompt.startswith("Case: ") and "\nOptions:\nA. " in q.prompt and q.prompt.endswith("\nPick:")
    assert mc_request(q).context == q.prompt and q.delimiter == " "


@pytest.mark.parametrize("template,needle", [
    ("Q: {question} {topic}", "unknown field {topic}; a template may use {question}, {context} and {choices}"),
    ("Q: {question} {", "not a str.format template"),
    ("Answer the following.", "the template never shows the question ({question})"),
])
def test_a_bad_template_is_refused_naming_its_file(tmp_path, template, needle):
    task = write_task(tmp_path / "med")
    (task / "template.txt").write_text(template)
    with pytest.raises(DataError) as err:
        load_eval(str(task))
    assert str(err.value).startswith(f"{task / 'template.txt'}: ") and needle in str(err.value)


def _unlabeled_task(folder, n=12):
    """A folder of questions nobody answered (``"answer": null``): what a server has of its users' prompts."""
    write_task(folder, n_train=n, n_dev=4, n_test=4)
    lines = [json.loads(x) for x in (folder / "train.jsonl").read_text().splitlines()]
    (folder / "train.jsonl").write_text("".join(json.dumps({**r, "answer": None}) + "\n" for r in lines))
    return folder


def test_a_folder_of_unlabeled_questions_is_the_servers_d_a_with_kd_terms_only(tiny_models, tmp_path):
    from fedcollm.build import load_aux, preflight

    clients = str(write_task(tmp_path / "med"))
    server = str(_unlabeled_task(tmp_path / "prompts"))
    assert all(q.answer is None for q in load_split(server, "train"))
    base = [f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", "precision=fp32",
            f"output_dir={tmp_path / 'runs'}", "federation.num_clients=2", f"tasks=[{clients}]", "eval.split=dev",
            f"data.aux_tasks=[{clients},{server}]", "federation.aux_fraction=0.5"]
    cfg = load_config(None, [*base, "kd.target=choices"])
    preflight(cfg)  # accepted: the unlabeled questions are the server's alone, distilled over their choices
    aux = load_aux(cfg)
    assert {q.task for q in aux if q.answer is None} == {server} and any(q.answer is not None for q in aux)
    needs_choices = "D\\^a holds unlabeled questions \\(answer null\\): they need kd.target=choices"
    with pytest.raises(DataError, match=needs_choices):
        preflight(load_config(None, base))  # the tokens target teacher-forces an answer they do not have


def test_unlabeled_questions_are_refused_where_an_answer_is_needed(tiny_models, tmp_path, capsys):
    from fedcollm.cli import main

    server = _unlabeled_task(tmp_path / "prompts")
    argv = ["run", f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", "precision=fp32",
            f"output_dir={tmp_path / 'runs'}", "run_name=r", "federation.num_clients=2", "kd.target=choices"]
    assert main([*argv, f"tasks=[{server}]"]) == 2  # the clients would train on it
    err = capsys.readouterr().err.strip()
    assert "question 'train-0' has no answer, and the clients train on this task" in err and "\n" not in err
    assert not (tmp_path / "runs").exists()
    (server / "dev.jsonl").write_text(json.dumps({"id": "d", "question": "q?", "choices": ["a", "b"],
                                                  "answer": None}) + "\n")
    with pytest.raises(DataError, match="dev question 'd' has no answer; a scored question needs one"):
        load_eval(str(server), split="dev")


def test_a_clients_own_file_may_be_in_the_plain_schema_of_its_task_folder(tmp_path):
    from fedcollm.build import client_data

    task = write_task(tmp_path / "med")
    (task / "template.txt").write_text("Q: {question}\n{choices}\nA:")
    mine = tmp_path / "client-0-own.jsonl"
    mine.write_text((task / "dev.jsonl").read_text())  # a client's private questions, in the folder's schema
    theirs = tmp_path / "client-1.jsonl"
    write_jsonl(theirs, load_split(str(task), "test"))  # the layout of `fedcollm data split`
    overrides = [f"tasks=[{task}]", "federation.num_clients=2", f"data.client_files=[{mine},{theirs}]"]
    cfg = load_config(None, overrides)
    own = client_data(cfg, 0)
    assert [q.id for q in own] == [q.id for q in load_split(str(task), "validation")]
    assert own == load_split(str(task), "validation")  # the folder's template rendered its prompts
    assert own[0].prompt.startswith("Q: ") and client_data(cfg, 1) == load_split(str(task), "test")
    two = load_config(None, [f"tasks=[{task},arc_easy]", "federation.num_clients=2",
                             f"data.client_files=[{mine},{theirs}]"])
    with pytest.raises(DataError, match="records in the plain schema name no task; such a client file needs tasks"):
        client_data(two, 0)
    lines = mine.read_text().splitlines()
    mine.write_text("\n".join([lines[0], json.dumps({**json.loads(lines[1]), "answer": None})]) + "\n")
    with pytest.raises(DataError, match="client-0-own.jsonl: question 'dev-1' has no answer; a client trains on"):
        client_data(cfg, 0)
    mine.write_text("\n\n")
    with pytest.raises(DataError, match="client-0-own.jsonl: no questions"):
        client_data(cfg, 0)
    mine.write_text("[1, 2]\n")
    with pytest.raises(DataError, match="client-0-own.jsonl: its first line is not a JSON object"):
        client_data(cfg, 0)


def test_a_clients_own_file_of_instruction_data_is_read_as_its_folder_reads_it(tmp_path):
    from test_instructions import write_instructions

    from fedcollm.build import client_data

    task = write_instructions(tmp_path / "leases")
    mine = tmp_path / "client-0.jsonl"
    mine.write_text((task / "dev.jsonl").read_text())
    cfg = load_config(None, [f"tasks=[{task}]", "federation.num_clients=1", f"data.client_files=[{mine}]"])
    own = client_data(cfg, 0)
    assert [(q.prompt, q.choices) for q in own] == [(q.prompt, q.choices) for q in load_split(str(task), "validation")]


def test_a_question_in_both_a_training_and_a_scored_file_is_refused(tmp_path):
    from fedcollm.build import preflight

    task = write_task(tmp_path / "med")
    first = (task / "train.jsonl").read_text().splitlines()[0]
    (task / "dev.jsonl").write_text((task / "dev.jsonl").read_text() + first + "\n")  # train-0 scored on dev too
    cfg = load_config(None, [f"tasks=[{task}]", "federation.num_clients=2", "eval.split=dev"])
    with pytest.raises(DataError, match=r"dev question 'train-0' is also training question 'train-0' \(the same "):
        preflight(cfg)
    (task / "dev.jsonl").write_text(json.dumps({"id": "train-0", "question": "another question?",
                                                "choices": ["a", "b"], "answer": 0}) + "\n")
    preflight(cfg)  # ids need only be unique within a file: the same id with another question is no overlap

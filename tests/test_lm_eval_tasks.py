"""A task in lm-eval's format is a task here: its requests come from lm-eval's own task classes, and our scorer's
per-question predictions are the ones lm-eval's own run gives on the same local files, for YAMLs of several
styles. A task that is not multiple-choice is refused in one line naming it and its output type."""

from __future__ import annotations

import json
import random
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.lm_eval_ref import run_lm_eval_tasks
from fedcollm.data import DataError, dev_split, eval_split, load_eval, load_split, mc_request
from fedcollm.data.schema import check_task, read_jsonl, write_jsonl
from fedcollm.evaluate import score_questions

WORDS = "contract tenant lease court appeal statute clause damages notice breach claim judge".split()

STYLES = {
    # letters as choices, the gold an index field
    "letters": """
        task: style_letters
        dataset_path: json
        dataset_kwargs: {{data_files: {{train: {train}, validation: {validation}, test: {test}}}}}
        output_type: multiple_choice
        training_split: train
        validation_split: validation
        test_split: test
        doc_to_text: "Question: {{{{question}}}}\\nA. {{{{options[0]}}}}\\nB. {{{{options[1]}}}}\\
          \\nC. {{{{options[2]}}}}\\nAnswer:"
        doc_to_choice: ["A", "B", "C"]
        doc_to_target: label
        metric_list: [{{metric: acc, aggregation: mean, higher_is_better: true}}]
        """,
    # the choice texts themselves, the gold given as its text
    "texts": """
        task: style_texts
        dataset_path: json
        dataset_kwargs: {{data_files: {{train: {train}, test: {test}}}}}
        output_type: multiple_choice
        training_split: train
        test_split: test
        doc_to_text: "{{{{question}}}}"
        doc_to_choice: "{{{{options}}}}"
        doc_to_target: "{{{{options[label]}}}}"
        metric_list: [{{metric: acc, aggregation: mean, higher_is_better: true}},
                      {{metric: acc_norm, aggregation: mean, higher_is_better: true}}]
        """,
    # a jinja template over several fields, a description, another delimiter, a YAML that includes another
    "jinja": """
        include: style_texts.yaml
        task: style_jinja
        description: "Questions of {{{{topic|upper}}}} law.\\n\\n"
        doc_to_text: "{{{{passage}}}}\\nQ: {{{{question|trim}}}} ({{{{topic}}}}, {{{{options|length}}}} options)\\nA:"
        target_delimiter: ": "
        """,
    # few-shot: examples of the training split before each question, drawn as lm-eval draws them
    "fewshot": """
        include: style_letters.yaml
        task: style_fewshot
        num_fewshot: 2
        fewshot_split: train
        """,
    # a !function helper beside the YAML reshapes each document
    "function": """
        task: style_function
        dataset_path: json
        dataset_kwargs: {{data_files: {{test: {test}}}}}
        output_type: multiple_choice
        test_split: test
        process_docs: !function helpers.process_docs
        doc_to_text: !function helpers.doc_to_text
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: gold
        metric_list: [{{metric: acc, aggregation: mean, higher_is_better: true}}]
        """,
}

HELPERS = '''
def process_docs(dataset):
    return dataset.map(lambda d: {"choices": [o.capitalize() for o in d["options"]], "gold": d["label"]})


def doc_to_text(doc):
    return "Passage: " + doc["passage"] + "\\nQuestion: " + doc["question"] + "\\nAnswer:"
'''


def _sentence(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_tasks(folder, n=(10, 4, 12), seed=0):
    """The four YAMLs and their local data (lm-eval's own ``json`` loader reads them)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, count in zip(("train", "validation", "test"), n):
        rows = [{"id": f"{split}-{i}", "question": "  " + _sentence(rng, 6) + "?", "passage": _sentence(rng, 8) + ".",
                 "topic": rng.choice(("tenancy", "contract")), "label": rng.randrange(3),
                 "options": [_sentence(rng, rng.randint(1, 3)) for _ in range(3)]} for i in range(count)]
        files[split] = folder / f"{split}.json"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "helpers.py").write_text(HELPERS)
    paths = {}
    for style, text in STYLES.items():
        paths[style] = folder / f"style_{style}.yaml"
        paths[style].write_text(textwrap.dedent(text).format(**files))
    return paths


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return {style: str(p) for style, p in write_tasks(tmp_path_factory.mktemp("lm_eval_tasks")).items()}


def test_each_style_renders_what_lm_eval_renders(tasks):
    letters = load_eval(tasks["letters"])
    assert len(letters) == 12 and letters[0].choices == ("A", "B", "C")
    req = mc_request(letters[0])
    assert req.context.startswith("Question:   ") and "?\nA. " in req.context and "\nC. " in req.context
    assert req.context.endswith("\nAnswer:") and req.delimiter == " "
    jinja = load_eval(tasks["jinja"])[0]
    assert jinja.prompt.startswith("Questions of ") and " options)\nA:" in jinja.prompt and jinja.delimiter == ": "
    fn = load_eval(tasks["function"])[0]
    assert fn.prompt.startswith("Passage: ") and all(c[:1].isupper() for c in fn.choices)
    texts = load_eval(tasks["texts"])[0]
    assert texts.choices[texts.answer] and texts.delimiter == " "


def test_splits_follow_the_yaml(tasks):
    assert (eval_split(tasks["letters"]), dev_split(tasks["letters"])) == ("test", "validation")
    assert dev_split(tasks["texts"]) == "dev"  # no validation split: a tenth of train is carved out
    assert len(load_split(tasks["letters"], "train")) == 10 and len(load_eval(tasks["letters"], split="dev")) == 4
    dev, rest = load_eval(tasks["texts"], split="dev"), load_split(tasks["texts"], "train")
    assert len(dev) == 1 and len(rest) == 9 and not {q.id for q in dev} & {q.id for q in rest}
    with pytest.raises(DataError, match="has no train split"):
        load_split(tasks["function"], "train")


def test_our_predictions_are_lm_evals_on_every_style(tiny_models, tasks):
    """The oracle is lm-eval's own run of each YAML, unchanged, on the same files and model."""
    model = AutoModelForCausalLM.from_pretrained(tiny_models["slm"], dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_models["slm"])
    ref = run_lm_eval_tasks(str(tiny_models["slm"]), list(tasks.values()), batch_size=4)
    for style, path in tasks.items():
        qs = load_eval(path)
        ours = score_questions(model, tok, qs, batch_size=3)
        theirs = ref[f"style_{style}"]
        assert len(theirs) == len(qs) == 12, style
        for q, r, s in zip(qs, ours, theirs, strict=True):
            assert r.lls == pytest.approx(s["lls"], abs=1e-3), (style, q.id)
            assert float(r.pred == r.gold) == s["acc"], (style, q.id)
            if s["acc_norm"] is not None:
                assert float(r.pred_norm == r.gold) == s["acc_norm"], (style, q.id)


def test_a_clients_file_of_an_lm_eval_task_keeps_its_prompt(tasks, tmp_path):
    qs = load_split(tasks["jinja"], "train")
    write_jsonl(tmp_path / "client.jsonl", qs)
    again = read_jsonl(tmp_path / "client.jsonl", None)  # a deployed client has no lm-eval and no YAML
    assert [mc_request(q) for q in again] == [mc_request(q) for q in qs]


def test_a_task_that_is_not_multiple_choice_is_refused_in_one_line(tmp_path, tiny_models, capsys):
    data = tmp_path / "gen.json"
    data.write_text(json.dumps({"question": "Say hi", "answer": "hi"}) + "\n")
    yaml = tmp_path / "gen.yaml"
    yaml.write_text(f"task: my_generation\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: {data}}}}}\n"
                    "output_type: generate_until\ntest_split: test\ndoc_to_text: '{{question}}'\n"
                    "doc_to_target: '{{answer}}'\ngeneration_kwargs: {until: ['\\n']}\n")
    with pytest.raises(DataError) as err:
        load_eval(str(yaml))
    assert f"task {yaml}: output type generate_until" in str(err.value) and "\n" not in str(err.value)
    from fedcollm.cli import main  # and from the command line: exit 2, that one line, nothing written

    out = tmp_path / "metrics.json"
    assert main(["eval", "--model", str(tiny_models["slm"]), "--tasks", str(yaml), "--out", str(out)]) == 2
    *_, err_line = capsys.readouterr().err.strip().splitlines()  # after HF datasets' own progress lines
    assert err_line.startswith(f"fedcollm: error: task {yaml}: output type generate_until") and not out.exists()


def test_names_lm_eval_knows_and_names_nobody_knows():
    assert check_task("sciq") == "sciq"  # a multiple_choice task of the installed lm-eval (its data: the hub)
    with pytest.raises(DataError, match=r"unknown task 'mmlu' in tasks: .*mmlu is an lm-eval group of several "):
        check_task("mmlu", "tasks")
    with pytest.raises(DataError, match=r"unknown task 'no_such_task_anywhere': neither a built-in task.*lm-eval"):
        check_task("no_such_task_anywhere")
    with pytest.raises(DataError, match=r"/nowhere/t.yaml is no file"):
        check_task("/nowhere/t.yaml")


def test_a_builtin_task_read_through_lm_evals_own_yaml_gives_the_same_requests(data_dir, tmp_path):
    from bench.builtin_via_lm_eval import diff
    from fedcollm.data import ALL_TASKS

    for task in ALL_TASKS:
        assert diff(task, load_eval(task, data_dir), tmp_path / task) == [], task


def test_fedcollm_eval_scores_a_task_yaml_and_an_instruction_folder(tiny_models, tasks, tmp_path, capsys):
    from test_instructions import write_instructions

    from fedcollm.cli import main

    prose = write_instructions(tmp_path / "leases")
    out = tmp_path / "metrics.json"
    assert main(["eval", "--model", str(tiny_models["slm"]), "--tasks", f"{tasks['letters']},{prose}",
                 "--split", "dev", "--precision", "fp32", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    flat = json.dumps(metrics)
    assert '"acc"' in flat and '"ppl"' in flat  # an accuracy for the YAML, a perplexity for the instruction data

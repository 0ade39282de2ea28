"""The three formats of "Your own data", built in a scratch folder from the shared copies of the benchmarks (so
that nothing here is data, and no file of it is committed): a task YAML in lm-eval's format (ARC-Challenge
questions, letters as choices), a JSONL folder in the plain schema (OpenBookQA's questions), and instruction data
(ARC-Easy's questions turned into prompt/response pairs: the response is the gold answer's text, a derived set,
not a real instruction corpus).

    python results/own-data/make_data.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fedcollm.data import load_split

YAML = """task: own_arc_letters
dataset_path: json
dataset_kwargs:
  data_files: {{train: {root}/yaml/train.json, validation: {root}/yaml/validation.json, test: {root}/yaml/test.json}}
output_type: multiple_choice
training_split: train
validation_split: validation
test_split: test
description: "Science questions.\\n\\n"
doc_to_text: "{{{{question.strip()}}}}\\n{{% for c in options %}}{{{{'ABCDE'[loop.index0]}}}}. {{{{c}}}}\\n\\
  {{% endfor %}}Answer:"
doc_to_choice: "{{{{['A', 'B', 'C', 'D', 'E'][:options|length]}}}}"
doc_to_target: gold
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
"""


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "yaml").mkdir(exist_ok=True)
    for split, ours in (("train", "train"), ("validation", "validation"), ("test", "test")):
        qs = load_split("arc_challenge", ours)
        (out / "yaml" / f"{split}.json").write_text("".join(
            json.dumps({"id": q.id, "question": q.question, "options": list(q.choices), "gold": q.answer}) + "\n"
            for q in qs))
    (out / "yaml" / "own_arc_letters.yaml").write_text(YAML.format(root=out))
    (out / "jsonl").mkdir(exist_ok=True)
    for split, ours in (("train", "train"), ("dev", "validation"), ("test", "test")):
        (out / "jsonl" / f"{split}.jsonl").write_text("".join(
            json.dumps({"id": q.id, "question": q.question, "choices": list(q.choices), "answer": q.answer}) + "\n"
            for q in load_split("openbookqa", ours)))
    (out / "instructions").mkdir(exist_ok=True)
    for split, ours in (("train", "train"), ("dev", "validation")):
        (out / "instructions" / f"{split}.jsonl").write_text("".join(
            json.dumps({"id": q.id, "prompt": f"Answer the science question.\nQuestion: {q.question}\nAnswer:",
                        "response": " " + q.choices[q.answer]}) + "\n" for q in load_split("arc_easy", ours)))
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())

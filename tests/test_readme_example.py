"""README's "Your own data" examples work as written: the ten-line JSONL task runs end to end (its shell lines as
they are, the two ``fedcollm`` commands on tiny models), and the task YAML loads through lm-eval."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from fedcollm.cli import main
from fedcollm.data import load_eval, load_split
from fedcollm.evaluate import predictions_name

README = Path(__file__).resolve().parents[1] / "README.md"


def _section_blocks(lang: str) -> list[str]:
    text = README.read_text()
    section = text[text.index("## Your own data"):text.index("### Who holds what")]
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)


def test_the_ten_line_jsonl_task_runs_as_the_readme_writes_it(tiny_models, tmp_path, capsys):
    (block,) = _section_blocks("bash")
    shell = [ln for ln in block.splitlines() if "fedcollm " not in ln]
    commands = [ln.split("&& ", 1)[-1] for ln in block.splitlines() if "fedcollm " in ln]
    shell.append("cd ..")  # the `cd ..` that shares a line with the run command
    subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(shell)], cwd=tmp_path, check=True)
    task = tmp_path / "my-task"
    assert len(load_split(str(task), "train")) == 8 and load_eval(str(task), split="dev")[0].answer == 1
    assert load_split(str(task), "train")[0].prompt.startswith("Case: \nQuestion: Which drug is an NSAID? (1)\nA. ")
    run, evaluate = (shlex.split(c)[1:] for c in commands)
    tiny = [f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", "precision=fp32",
            f"output_dir={tmp_path / 'runs'}", "run_name=readme"]
    run = [a.replace("tasks=[my-task]", f"tasks=[{task}]") for a in run]
    assert main([*run, *tiny]) == 0, capsys.readouterr().err
    report = (tmp_path / "runs" / "readme" / "report.md").read_text()
    assert "my-task" in report
    evaluate = [str(tiny_models["slm"]) if a == "qwen2.5-coder-0.5b-instruct" else str(task) if a == "my-task" else a
                for a in evaluate]
    out, preds = tmp_path / "eval.json", tmp_path / "preds"
    assert main([*evaluate, "--precision", "fp32", "--out", str(out), "--predictions", str(preds)]) == 0
    assert json.loads(out.read_text())["metrics"][str(task)]["n"] == 1
    (written,) = preds.iterdir()  # one flat file named by the folder, not a tree named by its path
    assert re.fullmatch(r"predictions_my-task-[0-9a-f]{8}\.jsonl", written.name)
    assert predictions_name(str(task)) != predictions_name(str(tmp_path / "other" / "my-task"))


def test_the_readme_task_yaml_loads_through_lm_eval(tmp_path):
    pytest.importorskip("lm_eval")
    (yaml,) = _section_blocks("yaml")[:1]
    rows = {"train": [("chest pain on exertion", "Which organ is at risk?", ["heart", "skin"], 0)] * 1,
            "dev": [("a broken wrist", "Which tissue is hurt?", ["bone", "hair"], 0)],
            "test": [("high blood sugar", "Which hormone is short?", ["adrenaline", "insulin"], 1)]}
    for split, recs in rows.items():
        (tmp_path / f"{split}.jsonl").write_text("".join(
            json.dumps({"case": c, "question": q, "options": o, "label": lab}) + "\n" for c, q, o, lab in recs))
    text = yaml.replace("/data/cases/", f"{tmp_path}/")
    path = tmp_path / "my_cases.yaml"
    path.write_text(text)
    (q,) = load_eval(str(path), split="test")
    assert q.prompt == "Case: high blood sugar\nQuestion: Which hormone is short?\nAnswer:"
    assert q.choices == ("adrenaline", "insulin") and q.answer == 1

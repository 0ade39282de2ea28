"""Instruction data as a task: a folder of JSONL files of prompts and their responses.

Three layouts are read, one per line (all lines of a file in one layout, told by the first line's keys)::

    {"id": "r1", "prompt": "Summarise the lease: ...", "response": "A 12-month lease ..."}     # ours
    {"instruction": "Summarise the lease.", "input": "...", "output": "A 12-month lease ..."}  # Alpaca
    {"instruction": "Summarise the lease: ...", "response": "A 12-month lease ..."}           # FlowerTune

Alpaca's and FlowerTune's lines are rendered with Alpaca's own prompt (the one FlowerTune's LLM templates format
with), ``### Instruction:`` ... ``### Response:``, and the response follows on the next line. Each line becomes a
``Question`` with one "choice", its response, so training is the existing CE on the answer's tokens (the
response's, never the prompt's) and the server's KD on D^a is the token-level KD on them. What is scored for such
a task is the held-out responses' negative log-likelihood per token and its perplexity (``evaluate``), not an
accuracy; choice-level training needs at least two choices, so ``kd.target=choices`` and
``train.objective=choices`` refuse such a task.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from .schema import DataError, Question, json_lines

ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
          "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                "{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
#: layout -> (the prompt's field, the response's field)
LAYOUTS = {"prompt": ("prompt", "response"), "alpaca": ("instruction", "output"),
           "flowertune": ("instruction", "response")}
FILES = ("train.jsonl", "dev.jsonl", "test.jsonl")


def _layout(rec) -> str | None:
    if not isinstance(rec, dict):
        return None
    if "prompt" in rec and "response" in rec:
        return "prompt"
    if "instruction" in rec and "output" in rec:
        return "alpaca"
    if "instruction" in rec and "response" in rec:
        return "flowertune"
    return None


@functools.lru_cache(maxsize=256)
def _first_layout(folder: str, mtimes: tuple) -> str | None:
    for name in FILES:
        path = Path(folder) / name
        if not path.is_file():
            continue
        with path.open("rb") as fh:
            for raw in fh:
                if raw.strip():
                    try:
                        return _layout(json.loads(raw))
                    except (ValueError, RecursionError):  # [[[...]]] nested past the stack, too
                        return None  # a bad first line: the multiple-choice reader names it
    return None


def is_instruction_task(task: str) -> bool:
    """Is ``task`` a folder whose files hold prompts and responses (rather than multiple-choice questions)?"""
    folder = Path(task).expanduser()
    try:
        if not folder.is_dir():
            return False
        mtimes = tuple((folder / f).stat().st_mtime_ns if (folder / f).is_file() else 0 for f in FILES)
    except OSError:
        return False
    return _first_layout(str(folder), mtimes) is not None


def render(rec: dict, layout: str) -> str:
    if layout == "prompt":
        return rec["prompt"]
    if rec.get("input"):
        return ALPACA_INPUT.format(instruction=rec["instruction"], input=rec["input"])
    return ALPACA.format(instruction=rec["instruction"])


def read_instruction_file(path: Path, task: str) -> list[Question]:
    """Every line of one file as a one-response ``Question``; the first bad line ends it, named by file and line."""
    out, seen, layout = [], {}, None
    for lineno, where, rec in json_lines(path):
        this = _layout(rec)
        layout = layout or this
        if this is None or this != layout:
            names = " / ".join(f"{p}+{r}" for p, r in LAYOUTS.values())
            raise DataError(f"{where}: not a {layout or 'prompt/response'} line (one of {names}, as the first line)")
        field_p, field_r = LAYOUTS[layout]
        # Alpaca's prompt (both layouts but ours) shows an input when the line has one: it must be text too
        for key in (field_p, field_r, *(("input",) if layout != "prompt" and rec.get("input") is not None else ())):
            if not isinstance(rec[key], str):
                raise DataError(f"{where}: {key} must be a string")
        if not rec[field_p].strip():
            raise DataError(f"{where}: the {field_p} is empty")
        if not rec[field_r].strip():
            raise DataError(f"{where}: the {field_r} is empty: nothing to train on or to score")
        qid = rec.get("id", f"{path.stem}-{lineno}")
        if not isinstance(qid, (str, int)) or isinstance(qid, bool) or not str(qid).strip():
            raise DataError(f"{where}: id must be a non-empty string or an integer, got {qid!r}"[:300])
        if str(qid) in seen:
            raise DataError(f"{where}: id {str(qid)!r} is already on line {seen[str(qid)]}"[:300])
        seen[str(qid)] = lineno
        prompt = render(rec, layout)
        out.append(Question(str(qid), task, prompt, (rec[field_r],), ("A",), 0, prompt=prompt, delimiter=""))
    if not out:
        raise DataError(f"{path}: no lines")
    return out

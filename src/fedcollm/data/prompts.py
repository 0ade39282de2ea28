"""Prompt formats: lm-eval's evaluation requests, and the training example built from the same text.

Evaluation follows lm-evaluation-harness 0.4.x task YAMLs exactly (context, target delimiter " ",
choice strings), so our accuracies are comparable with published lm-eval numbers. Training reuses the
evaluation context and appends the gold choice: the model is tuned on exactly the continuation it is
later scored on, with the loss on the answer tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schema import Question

TARGET_DELIMITER = " "
_CSQA_LETTERS = ("A", "B", "C", "D", "E")


@dataclass(frozen=True)
class MCRequest:
    """One question as lm-eval sees it: a context and the choice strings (continuations sans delimiter)."""

    context: str
    choices: tuple[str, ...]
    gold: int | None  # None: an unlabeled question
    delimiter: str = TARGET_DELIMITER


def context_of(q: Question) -> str:
    """The task's ``doc_to_text``: the question's own rendered prompt, else the built-in task's template."""
    if q.prompt is not None:
        return q.prompt
    if q.task in ("arc_easy", "arc_challenge"):
        return f"Question: {q.question}\nAnswer:"
    if q.task == "openbookqa":
        return q.question
    if q.task == "commonsense_qa":
        lines = [f"Question: {q.question.strip()}"]
        lines += [f"{letter}. {text}" for letter, text in zip(_CSQA_LETTERS, q.choices)]
        return "\n".join(lines) + "\nAnswer:"
    raise ValueError(f"no prompt format for task {q.task!r}")


def choices_of(q: Question) -> tuple[str, ...]:
    """The task's ``doc_to_choice``: choice texts, or the letters A-E for CommonsenseQA."""
    if q.task == "commonsense_qa" and q.prompt is None:
        return _CSQA_LETTERS[: len(q.choices)]
    return q.choices


def mc_request(q: Question) -> MCRequest:
    return MCRequest(context_of(q), choices_of(q), q.answer, q.delimiter)


#: the metric each task is reported by (the paper reports accuracy, lm-eval's ``acc``, on all four); a task
#: reported by ``acc_norm`` has its choices compared length-normalised, in training as in scoring
REPORTED_METRIC: dict[str, str] = {}


def reported_metric(task: str) -> str:
    """``acc`` or ``acc_norm``: which of the evaluator's two accuracies a task's results are reported by."""
    return REPORTED_METRIC.get(task, "acc")


def training_pair(q: Question) -> tuple[str, str]:
    """(prompt, answer) for supervised tuning: the evaluation context and the delimited gold choice."""
    if q.answer is None:
        raise ValueError(f"{q.task} question {q.id!r} is unlabeled: it has no answer to train on")
    return context_of(q), q.delimiter + choices_of(q)[q.answer]

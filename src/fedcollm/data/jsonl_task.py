"""A task of the user's own: a folder of JSONL files in one plain schema.

The folder holds ``train.jsonl`` (what clients and the server train on), and ``dev.jsonl`` and ``test.jsonl``
(what choices are made on, and what is reported; without ``dev.jsonl`` a fixed tenth of train is carved out,
as for CommonsenseQA). One question per line::

    {"id": "q1", "question": "Which drug ...?", "choices": ["aspirin", "ibuprofen", "codeine"], "answer": 1}
    {"id": "q2", "question": "...", "choices": ["...", "..."], "answer": "B", "context": "A passage ..."}

``answer`` is the gold choice's index (0-based) or its label (``A``, ``B``, ..., past 26 choices the indices as
text, unless the line gives its own ``labels``), or ``null`` for an unlabeled question: a task of such questions
can only be the server's D^a (``data.aux_tasks``, not a task the clients train on or one that is scored), which
distils on them and never trains a CE on an answer nobody has. ``context`` is optional. The prompt is lm-eval's
multiple-choice default, ``Question: ...\\nAnswer:`` (the context on the lines before it), or the folder's
``template.txt`` (Python ``str.format`` with ``{question}``, ``{context}`` and ``{choices}``, the choices one per
line as ``A. ...``), and each choice is scored as `` choice`` after it. The template lives with the data, not in a
run's config: a task's prompt is part of the task, so every run, every client and every scoring of the folder
reads the same prompts.

A line that cannot be a question is refused with the file and line: no answer or one out of range, fewer than
two choices, an id seen before, an empty question, bytes that are not UTF-8.
"""

from __future__ import annotations

from pathlib import Path

from .schema import DataError, Question, json_lines

DEFAULT_TEMPLATE = "Question: {question}\nAnswer:"
CONTEXT_TEMPLATE = "{context}\nQuestion: {question}\nAnswer:"
FILES = {"train": "train.jsonl", "dev": "dev.jsonl", "test": "test.jsonl"}
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def is_jsonl_task(name: str) -> bool:
    """Does ``name`` name a folder holding a task's JSONL files?"""
    path = Path(name).expanduser()
    try:
        return path.is_dir() and any((path / f).is_file() for f in FILES.values())
    except OSError:
        return False


TEMPLATE_FILE = "template.txt"
FIELDS = ("question", "context", "choices")


def folder_template(folder: Path) -> str | None:
    """The folder's ``template.txt`` (its trailing newline dropped), checked once; None: lm-eval's default."""
    path = folder / TEMPLATE_FILE
    if not path.is_file():
        return None
    try:
        template = path.read_text(encoding="utf-8").rstrip("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
    try:
        template.format(**{f: "" for f in FIELDS})
    except KeyError as exc:
        raise DataError(f"{path}: unknown field {{{exc.args[0]}}}; a template may use {{question}}, {{context}} "
                        "and {choices} (write {{ and }} for literal braces)") from None
    except (IndexError, ValueError) as exc:
        raise DataError(f"{path}: not a str.format template ({exc})") from None
    if "{question}" not in template:
        raise DataError(f"{path}: the template never shows the question ({{question}})")
    return template


def default_labels(n: int) -> list[str]:
    """A, B, ... for up to 26 choices; past Z, the choices' 0-based indices as text."""
    return list(LETTERS[:n]) if n <= len(LETTERS) else [str(i) for i in range(n)]


def render(rec: dict, labels: list[str], template: str | None) -> str:
    choices = "\n".join(f"{label}. {c}" for label, c in zip(labels, rec["choices"]))
    fmt = template or (CONTEXT_TEMPLATE if rec.get("context") else DEFAULT_TEMPLATE)
    return fmt.format(question=rec["question"], context=rec.get("context") or "", choices=choices)


def _question(rec, task: str, where: str, template: str | None) -> Question:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: not a question (a JSON object with id, question, choices, answer)")
    for key in ("id", "question", "choices", "answer"):
        if key not in rec:
            hint = " (null for an unlabeled question of the server's D^a)" if key == "answer" else ""
            raise DataError(f"{where}: no {key!r}{hint}")
    qid, text, choices, answer = rec["id"], rec["question"], rec["choices"], rec["answer"]
    if not isinstance(qid, (str, int)) or isinstance(qid, bool) or not str(qid).strip():
        raise DataError(f"{where}: id must be a non-empty string or an integer, got {qid!r}"[:300])
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: the question is empty")
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where}: choices must be a list of strings")
    if len(choices) < 2:
        raise DataError(f"{where}: {len(choices)} choice(s); a multiple-choice question needs at least 2")
    if "context" in rec and rec["context"] is not None and not isinstance(rec["context"], str):
        raise DataError(f"{where}: context must be a string")
    labels = rec.get("labels")
    if labels is None:
        labels = default_labels(len(choices))
    if (not isinstance(labels, list) or len(labels) != len(choices)
            or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in labels)
            or len({str(x).strip() for x in labels}) != len(labels) or not all(str(x).strip() for x in labels)):
        raise DataError(f"{where}: labels must be one distinct, non-empty string or integer per choice")
    labels = [str(x).strip() for x in labels]
    if answer is None:  # unlabeled: a question only the server's D^a may hold (``data.aux_tasks``, KD terms only)
        gold = None
    elif isinstance(answer, bool) or not isinstance(answer, (int, str)):
        raise DataError(f"{where}: answer must be a choice's index or label, got {answer!r}"[:300])
    elif isinstance(answer, int):
        if not 0 <= answer < len(choices):
            raise DataError(f"{where}: answer {answer} is out of range for {len(choices)} choices (0-based)")
        gold = answer
    elif answer.strip() in labels:
        gold = labels.index(answer.strip())
    else:
        raise DataError(f"{where}: answer {answer!r} is none of the labels {', '.join(labels)}"[:300])
    try:
        prompt = render(rec, labels, template)
    except (KeyError, IndexError, ValueError) as exc:
        raise DataError(f"{where}: the template cannot be filled ({type(exc).__name__}: {exc})") from None
    return Question(str(qid), task, text, tuple(choices), tuple(labels), gold, prompt=prompt, delimiter=" ")


def read_task_file(path: Path, task: str, template: str | None = None) -> list[Question]:
    """Every question of one JSONL file of a task folder; the first bad line ends it, named by file and line."""
    out, seen = [], {}
    for lineno, where, rec in json_lines(path):
        q = _question(rec, task, where, template)
        if q.id in seen:
            raise DataError(f"{where}: id {q.id!r} is already the question of line {seen[q.id]}"[:300])
        seen[q.id] = lineno
        out.append(q)
    if not out:
        raise DataError(f"{path}: no questions")
    return out

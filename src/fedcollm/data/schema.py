"""One schema for every multiple-choice task: the four built-in ones (local JSONL or the HF hub), a folder of the
user's JSONL files (``jsonl_task``), a task in lm-eval's format (``lm_eval_task``).

Every loader returns ``list[Question]`` so prompts, partitions, training and scoring never care where
the data came from. Local files use the original ARC/CommonsenseQA layout
(``{"id", "question": {"stem", "choices": [{"label", "text"}]}, "answerKey"}``); labels are letters,
or digits in some ARC questions, and both are accepted.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import one_line

#: Our task names (lm-eval's) -> local sub-folder, split files and the HF hub source.
TASKS: dict[str, dict[str, str]] = {
    "arc_easy": {"dir": "arc_easy", "eval_split": "test", "hub": "allenai/ai2_arc:ARC-Easy"},
    "arc_challenge": {"dir": "arc_challenge", "eval_split": "test", "hub": "allenai/ai2_arc:ARC-Challenge"},
    "openbookqa": {"dir": "obqa", "eval_split": "test", "hub": "allenai/openbookqa:main"},
    # CommonsenseQA's test split has no answers; lm-eval evaluates on validation, and so do we.
    "commonsense_qa": {"dir": "csqa", "eval_split": "validation", "hub": "tau/commonsense_qa"},
}
ALL_TASKS = tuple(TASKS)
#: Split names as we use them -> local file stem (the local copies call validation "dev").
_LOCAL_SPLIT = {"train": "train", "validation": "dev", "test": "test"}


class DataError(ValueError):
    """A user-facing data problem (missing directory/file, malformed line, unknown task), in one line."""

    def __str__(self) -> str:
        return one_line(super().__str__())


@dataclass(frozen=True)
class Question:
    """A multiple-choice question: ``choices[answer]`` is the gold choice text; ``answer`` None: unlabeled (a
    server's D^a question nobody answered, ``DataSection.aux_unlabeled``), which only KD terms may use.

    ``prompt`` is the context as the model reads it, already rendered (a task of lm-eval's format or a JSONL file
    with a template); None: the built-in task's own template (``prompts.context_of``). ``delimiter`` goes between
    the context and a choice (lm-eval's ``target_delimiter``)."""

    id: str
    task: str
    question: str
    choices: tuple[str, ...]
    labels: tuple[str, ...]
    answer: int | None
    prompt: str | None = None
    delimiter: str = " "


def is_builtin(task: str) -> bool:
    return task in TASKS


def is_instructions(task: str) -> bool:
    """Is ``task`` instruction data (prompts and responses, scored by their NLL), not multiple-choice questions?"""
    from .instructions import is_instruction_task

    return not is_builtin(task) and is_instruction_task(task)


def check_task(task: str, where: str = "") -> str:
    """``task`` if it names a task: a built-in one, a folder of the user's own JSONL files (``jsonl_task``), or a
    task in lm-eval's format (``lm_eval_task``: a name lm-eval knows, or a task YAML's path)."""
    from .jsonl_task import is_jsonl_task
    from .lm_eval_task import is_lm_eval_task, unknown_hint

    if task not in TASKS and not is_jsonl_task(task) and not is_lm_eval_task(task):
        raise DataError(f"unknown task {task!r}{f' in {where}' if where else ''}: neither a built-in task "
                        f"({', '.join(ALL_TASKS)}), nor a folder of JSONL files (train.jsonl, dev.jsonl, test.jsonl), "
                        f"nor a multiple_choice task of lm-eval (a name it knows, or a task YAML){unknown_hint(task)}")
    return task


def _kind(task: str) -> str:
    """builtin, folder (our JSONL schema) or lm_eval (a name or a YAML)."""
    from .jsonl_task import is_jsonl_task

    if is_builtin(task):
        return "builtin"
    return "folder" if is_jsonl_task(check_task(task)) else "lm_eval"


def check_tasks(names: Iterable[str], where: str = "tasks") -> list[str]:
    """The one check of a task list (config ``tasks``/``eval.tasks``, ``fedcollm eval --tasks``): known, not empty."""
    tasks = list(names)
    if not tasks:
        raise DataError(f"{where} is empty; choose from {', '.join(ALL_TASKS)}")
    for t in tasks:
        check_task(t, where)
    return tasks


def eval_split(task: str) -> str:
    """The split lm-eval scores the task on (test, or validation for CommonsenseQA; a folder's test.jsonl; an
    lm-eval task's test split, else its validation split, as lm-eval's ``eval_docs``)."""
    kind = _kind(task)
    if kind == "builtin":
        return TASKS[task]["eval_split"]
    if kind == "folder":
        return "test"
    from .lm_eval_task import splits

    return "test" if "test" in splits(task) else "validation"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """``data_dir`` or ``$FEDCOLLM_DATA_DIR``; None means "use the HF hub"."""
    value = data_dir if data_dir is not None else os.environ.get("FEDCOLLM_DATA_DIR")
    if value in (None, "", "hub"):
        return None
    path = Path(value).expanduser()
    try:
        is_dir = path.is_dir()
    except OSError as exc:  # e.g. a name longer than the file system allows (ENAMETOOLONG)
        raise DataError(f"data directory {path}: not a usable path ({exc.strerror or exc})") from None
    if not is_dir:
        raise DataError(
            f"data directory {path} does not exist; pass --data-dir DIR or set FEDCOLLM_DATA_DIR to the folder "
            "holding arc_easy/, arc_challenge/, obqa/, csqa/ (or 'hub' to download from the HF hub)"
        )
    return path


def _record_to_question(rec: dict, task: str, where: str) -> Question:
    try:
        q = rec["question"]
        labels = tuple(str(c["label"]) for c in q["choices"])
        texts = tuple(str(c["text"]) for c in q["choices"])
        answer = None if rec["answerKey"] is None else labels.index(str(rec["answerKey"]).strip())
        prompt, delimiter = rec.get("prompt"), rec.get("delimiter", " ")
        if not (prompt is None or isinstance(prompt, str)) or not isinstance(delimiter, str):
            raise TypeError("prompt and delimiter must be strings")
        return Question(str(rec["id"]), task, str(q["stem"]), texts, labels, answer, prompt, delimiter)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: not a multiple-choice record ({type(exc).__name__}: {exc})") from None


def json_lines(path: Path) -> Iterator[tuple[int, str, object]]:
    """(line number, ``file:line``, the parsed JSON) of each non-blank line of a user's file; a line that is not
    UTF-8 or not JSON is refused naming its file and line."""
    try:
        data = path.read_bytes()  # bytes: a line that is not UTF-8 is reported like a malformed one
    except OSError as exc:
        raise DataError(f"data file {path} cannot be read ({exc.strerror or exc})") from None
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        where = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{where}: not UTF-8 text (byte {exc.start} of the line)") from None
        if not line.strip():
            continue
        try:
            yield lineno, where, json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise DataError(f"{where}: malformed JSON ({str(exc)[:120]})") from None


def read_jsonl(path: Path, task: str | None) -> list[Question]:
    """Read one local JSONL file; a malformed line is reported with file and line number.

    With ``task=None`` each record names its own task (the per-client files of ``write_jsonl``).
    """
    if not path.is_file():
        raise DataError(f"missing data file {path} (task {task}); see README 'Data' for where it comes from")
    out = []
    for _, where, rec in json_lines(path):
        rec_task = task if task is not None else (rec.get("task") if isinstance(rec, dict) else None)
        if not isinstance(rec_task, str) or not (rec_task in TASKS or (task is None and _names_own_task(rec))):
            raise DataError(f"{where}: record names no known task ({rec_task!r})")
        out.append(_record_to_question(rec, rec_task, where))
    return out


def read_client_file(path: Path, tasks: Sequence[str]) -> list[Question]:
    """A client's own file: the per-client layout of ``fedcollm data split`` (each record names its task), or
    the plain schema of a task folder (``jsonl_task``) when ``tasks`` is that one folder, whose template then
    renders the prompts as it does for the folder's own files."""
    if not path.is_file():
        raise DataError(f"missing data file {path}: a client's own file (data.client_files / data-file)")
    first = next((rec for _, _, rec in json_lines(path)), None)
    if first is None:
        raise DataError(f"{path}: no questions (a client's own file)")
    if not isinstance(first, dict):
        raise DataError(f"{path}: its first line is not a JSON object (a question per line)")
    if isinstance(first.get("question"), dict):  # the layout `data split` writes: {"question": {"stem", ...}}
        return read_jsonl(path, None)
    folders = [t for t in tasks if _kind(t) == "folder"]
    if len(tasks) != 1 or len(folders) != 1:
        raise DataError(f"{path}: records in the plain schema name no task; such a client file needs tasks to be "
                        f"the one task folder it belongs to (tasks: {list(tasks)})"[:300])
    from .instructions import is_instruction_task, read_instruction_file
    from .jsonl_task import folder_template, read_task_file

    if is_instruction_task(folders[0]):
        return read_instruction_file(path, folders[0])
    return read_task_file(path, folders[0], folder_template(Path(folders[0]).expanduser()))


def _names_own_task(rec) -> bool:
    """A per-client record of a task of the user's own carries its rendered prompt: no folder needed to read it."""
    return isinstance(rec, dict) and isinstance(rec.get("prompt"), str)


def write_jsonl(path: Path, questions: list[Question]) -> None:
    """Questions in the local layout plus a ``task`` field (what a deployed client reads as its D^k)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for q in questions:
            choices = [{"label": lab, "text": txt} for lab, txt in zip(q.labels, q.choices)]
            rec = {"id": q.id, "task": q.task, "question": {"stem": q.question, "choices": choices},
                   "answerKey": None if q.answer is None else q.labels[q.answer]}
            if q.prompt is not None:  # a task of the user's own: the prompt as rendered, and its delimiter
                rec["prompt"], rec["delimiter"] = q.prompt, q.delimiter
            fh.write(json.dumps(rec) + "\n")


def _load_hub(task: str, split: str) -> list[Question]:
    try:
        import datasets  # optional: only where the hub is reachable
    except ImportError as exc:
        raise DataError("no data directory given and `datasets` is not installed: pip install 'fedcollm[hub]'") from exc
    repo, _, name = TASKS[task]["hub"].partition(":")
    try:
        ds = datasets.load_dataset(repo, name or None, split=split)
    except (OSError, ConnectionError) as exc:  # requests' ConnectionError is an OSError too
        raise DataError(f"no data directory given (--data-dir / FEDCOLLM_DATA_DIR) and the HF hub dataset {repo} "
                        f"cannot be loaded: {str(exc).splitlines()[0][:200]}") from None
    out = []
    for i, row in enumerate(ds):
        if task == "openbookqa":
            rec = {"id": row["id"], "question": {"stem": row["question_stem"], "choices": _hf_choices(row)},
                   "answerKey": row["answerKey"]}
        else:
            rec = {"id": row["id"], "question": {"stem": row["question"], "choices": _hf_choices(row)},
                   "answerKey": row["answerKey"]}
        out.append(_record_to_question(rec, task, f"{repo}[{split}][{i}]"))
    return out


def _hf_choices(row: dict) -> list[dict]:
    return [{"label": lab, "text": txt} for lab, txt in zip(row["choices"]["label"], row["choices"]["text"])]


#: Tasks whose official validation split is their *test* set here (lm-eval scores CommonsenseQA on it):
#: their dev set is carved from train instead, a fixed tenth of it (the questions with the smallest
#: sha1 of their id: the same on every machine and for every seed), and it is never in D^a or any D^k.
DEV_FROM_TRAIN = {"commonsense_qa": 0.1}
DEV_SHARE = 0.1  # the same carve for a task folder without dev.jsonl
#: Set (to anything) while tuning: reading a test split then fails, so no test question can steer a choice.
SEAL_ENV = "FEDCOLLM_SEAL_TEST"


def dev_split(task: str) -> str:
    """The split that choices are made on: the official validation split (a folder's dev.jsonl), or the ``dev``
    carve of train (CSQA; a folder without dev.jsonl)."""
    kind = _kind(task)
    if kind == "folder":
        return "validation" if (Path(task).expanduser() / "dev.jsonl").is_file() else "dev"
    if kind == "lm_eval":  # its validation split, unless that is what it is scored on
        from .lm_eval_task import splits

        return "validation" if eval_split(task) == "test" and "validation" in splits(task) else "dev"
    return "dev" if task in DEV_FROM_TRAIN else "validation"


def _carved(task: str) -> bool:
    """Is ``task``'s dev set carved from its train split?"""
    return task in DEV_FROM_TRAIN or (not is_builtin(task) and dev_split(task) == "dev")


def _carve(task: str, train: list[Question]) -> tuple[list[Question], list[Question]]:
    """(dev, rest) of a task's train split, per ``DEV_FROM_TRAIN``."""
    n = max(1, round(DEV_FROM_TRAIN.get(task, DEV_SHARE) * len(train)))
    dev = {q.id for q in sorted(train, key=lambda q: hashlib.sha1(q.id.encode()).hexdigest())[:n]}
    return [q for q in train if q.id in dev], [q for q in train if q.id not in dev]


def load_split(task: str, split: str, data_dir: str | os.PathLike | None = None) -> list[Question]:
    """All questions of ``task``'s ``split``: "train" (without a carved dev set), "validation", "test",
    or "dev" (a carve of train, for the tasks in ``DEV_FROM_TRAIN``)."""
    check_task(task)
    if split == "dev" or (split == "train" and _carved(task)):
        if not _carved(task):
            raise DataError(f"{task} has an official validation split: ask for 'validation', not 'dev'")
        dev, rest = _carve(task, _read_split(task, "train", data_dir))
        return dev if split == "dev" else rest
    if os.environ.get(SEAL_ENV) and split == eval_split(task):
        raise DataError(f"{task}'s {split} split is its test set, and it is sealed while tuning ({SEAL_ENV} is "
                        "set): choose on eval.split=dev; the test set is scored once, at the end")
    return _read_split(task, split, data_dir)


def _read_split(task: str, split: str, data_dir: str | os.PathLike | None) -> list[Question]:
    if split not in _LOCAL_SPLIT:
        raise DataError(f"unknown split {split!r}; choose from train, validation, test, dev")
    kind = _kind(task)
    if kind == "lm_eval":  # lm-eval builds the requests; the YAML names its own data files
        from .lm_eval_task import read_split

        return read_split(task, split)
    if kind == "folder":  # a folder of the user's JSONL files: its own files, no data_dir
        from .instructions import is_instruction_task, read_instruction_file
        from .jsonl_task import folder_template, read_task_file

        path = Path(task).expanduser() / f"{_LOCAL_SPLIT[split]}.jsonl"
        if not path.is_file():
            raise DataError(f"task {task}: no {path.name} for its {split} split")
        if is_instruction_task(task):
            return read_instruction_file(path, task)
        return read_task_file(path, task, folder_template(path.parent))
    root = resolve_data_dir(data_dir)
    if root is None:
        qs, where = _load_hub(task, split), f"HF hub dataset {TASKS[task]['hub']} [{split}]"
    else:
        path = root / TASKS[task]["dir"] / f"{_LOCAL_SPLIT[split]}.jsonl"
        qs, where = read_jsonl(path, task), str(path)
    if not qs:  # an empty evaluation set would score NaN, an empty training set trains nothing
        raise DataError(f"{where}: no questions in {task}'s {split} split")
    return qs


def load_eval(task: str, data_dir: str | os.PathLike | None = None, limit: int | None = None,
              split: str = "test") -> list[Question]:
    """The evaluation questions of ``task`` in file order (lm-eval's order), optionally the first ``limit``.

    ``split``: "test" (what lm-eval scores, for the report) or "dev" (what choices are made on).
    ``limit`` must be >= 1: 0 would read as "all" and a negative one would drop questions from the end.
    """
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise DataError(f"limit must be >= 1 (or none for all questions), got {limit}")
    if split not in ("dev", "test"):
        raise DataError(f"unknown evaluation split {split!r}; choose dev or test")
    qs = load_split(task, eval_split(task) if split == "test" else dev_split(task), data_dir)
    qs = qs[:limit] if limit else qs
    unlabeled = next((q for q in qs if q.answer is None), None)
    if unlabeled is not None:
        raise DataError(f"{task}: {split} question {unlabeled.id!r} has no answer; a scored question needs one")
    return qs

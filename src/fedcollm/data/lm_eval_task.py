"""A task in lm-evaluation-harness's format: any ``multiple_choice`` task lm-eval knows, or a task YAML.

The YAML is lm-eval's own (``dataset_path: json`` with local ``data_files`` for private data, ``doc_to_text``,
``doc_to_choice``, ``doc_to_target``, ``target_delimiter``, ``include``, ``!function``), so a task written for
lm-eval runs here unchanged. The requests are built by lm-eval's task classes, never by re-reading its
templates: each document's context is its ``fewshot_context`` and each choice its ``construct_requests``
continuation, exactly what lm-eval would score. They become ``Question``s with the rendered prompt, so
training, partitions, per-client files and our scorer treat them as any other question.

lm-eval is an extra (``pip install 'fedcollm[lm-eval]'``): it brings some forty packages (datasets, evaluate,
sacrebleu, scikit-learn, ...) that the built-in tasks and the JSONL folders do not need, and a deployed client
reads its questions with their prompts already rendered, so only the machine that builds the splits needs it.
"""

from __future__ import annotations

import functools
from pathlib import Path

from .schema import DataError, Question

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: our split names -> lm-eval's document accessors
_DOCS = {"train": "training_docs", "validation": "validation_docs", "test": "test_docs"}
_HAS = {"train": "has_training_docs", "validation": "has_validation_docs", "test": "has_test_docs"}


def is_yaml(name: str) -> bool:
    return name.endswith((".yaml", ".yml"))


def _lm_eval():
    try:
        import lm_eval.tasks  # noqa: F401  (the extra)
    except ImportError:
        return None
    return lm_eval.tasks


@functools.lru_cache(maxsize=1)
def _index() -> dict[str, str]:
    """Every name the installed lm-eval knows -> task, group or tag (indexing takes seconds: once per process)."""
    tasks = _lm_eval()
    if tasks is None:
        return {}
    manager = tasks.TaskManager()
    kinds = {name: "tag" for name in manager.all_tags}
    kinds.update({name: "group" for name in manager.all_groups})
    kinds.update({name: "task" for name in manager.all_subtasks})
    return kinds


def is_lm_eval_task(name: str) -> bool:
    """Is ``name`` a task YAML's path, or a task of the installed lm-eval?"""
    if is_yaml(name):
        return Path(name).expanduser().is_file()
    return bool(name) and "/" not in name and _index().get(name) == "task"


def unknown_hint(name: str) -> str:
    """What to say after "unknown task" about lm-eval (missing extra, missing YAML file, a group's name)."""
    if is_yaml(name):
        return f"; {name} is no file"
    if not _lm_eval():
        return "; lm-eval's tasks need its extra: pip install 'fedcollm[lm-eval]'"
    kind = _index().get(name) if "/" not in name else None
    return f"; {name} is an lm-eval {kind} of several tasks: name its tasks one by one" if kind else ""


@functools.lru_cache(maxsize=16)
def _task(name: str):
    """lm-eval's Task object for ``name``, its documents loaded (local JSON, or the hub where reachable)."""
    tasks = _lm_eval()
    if tasks is None:
        raise DataError(f"task {name}: lm-eval's tasks need its extra: pip install 'fedcollm[lm-eval]'")
    if is_yaml(name):
        manager, spec = tasks.TaskManager(include_defaults=False), str(Path(name).expanduser().resolve())
    else:
        manager, spec = tasks.TaskManager(), name
    try:
        loaded = manager.load(spec)["tasks"]
    except (OSError, ConnectionError) as exc:
        raise DataError(f"task {name}: its dataset cannot be loaded ({str(exc).splitlines()[0][:200]})") from None
    except Exception as exc:  # lm-eval reports a bad YAML, template or !function with its own exception types
        raise DataError(f"task {name}: lm-eval cannot build it ({type(exc).__name__}: {str(exc)[:200]})") from None
    if len(loaded) != 1:
        raise DataError(f"task {name} is a group of {len(loaded)} tasks ({', '.join(sorted(loaded)[:5])}, ...); "
                        "name its tasks one by one")
    (task,) = loaded.values()
    if task.OUTPUT_TYPE != "multiple_choice":
        raise DataError(f"task {name}: output type {task.OUTPUT_TYPE}; FedCoLLM trains and scores "
                        "multiple_choice tasks only")
    if task.multiple_input:
        raise DataError(f"task {name}: its choices are in the context (several inputs, one continuation, as "
                        "Winogrande); FedCoLLM scores one context with several continuations")
    return task


def splits(name: str) -> set[str]:
    """The splits the task defines: some of train, validation, test."""
    task = _task(name)
    return {s for s, has in _HAS.items() if getattr(task, has)()}


def read_split(name: str, split: str) -> list[Question]:
    """Every document of ``split`` as a ``Question``, in lm-eval's order; a bad one is named by its index."""
    task = _task(name)
    if split not in splits(name):
        raise DataError(f"task {name} has no {split} split (it has {', '.join(sorted(splits(name))) or 'none'})")
    docs = list(getattr(task, _DOCS[split])())
    # lm-eval's evaluator seeds a task's few-shot sampler once (its fewshot_random_seed) and then draws each
    # document's examples in document order: reseeded here per split read, the same draws give the same contexts
    from lm_eval.defaults import DEFAULT_OTHER_SEED

    task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
    ids = [d.get("id") if isinstance(d, dict) else None for d in docs]
    own_ids = all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in ids) and len(set(ids)) == len(ids)
    out = []
    for i, doc in enumerate(docs):
        where = f"task {name}, {split} document {i}"
        try:
            out.append(_question(task, doc, str(ids[i]) if own_ids else f"{split}-{i}", name, i))
        except DataError:
            raise
        except Exception as exc:  # a template or helper that fails on this document
            raise DataError(f"{where}: lm-eval cannot render it ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not out:
        raise DataError(f"task {name}: no documents in its {split} split")
    return out


def _question(task, doc: dict, qid: str, name: str, i: int) -> Question:
    where = f"task {name}, document {i}"
    ctx = task.fewshot_context(doc, num_fewshot=task.config.num_fewshot or 0, gen_prefix=task.doc_to_prefix(doc))
    requests = task.construct_requests(doc=doc, ctx=ctx, metadata=(name, i, 1))
    choices = [str(c) for c in task.doc_to_choice(doc)]
    if len(choices) < 2:
        raise DataError(f"{where}: {len(choices)} choice(s); a multiple-choice question needs at least 2")
    delimiter = task.config.target_delimiter
    for req, choice in zip(requests, choices):  # what lm-eval scores must be what we score
        if req.arguments[0] != ctx or req.arguments[1] != delimiter + choice:
            raise DataError(f"{where}: lm-eval's request {req.arguments[:2]!r} is not context + delimiter + "
                            "choice"[:300])
    gold = task.doc_to_target(doc)
    if isinstance(gold, list):
        raise DataError(f"{where}: several gold answers ({gold}); FedCoLLM needs one"[:300])
    if isinstance(gold, str):
        if gold not in choices:
            raise DataError(f"{where}: the target {gold!r} is none of the choices"[:300])
        gold = choices.index(gold)
    if not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise DataError(f"{where}: the target {gold!r} is out of range for {len(choices)} choices"[:300])
    text = task.doc_to_text(doc)
    labels = tuple(LETTERS[j] if j < len(LETTERS) else str(j) for j in range(len(choices)))
    return Question(qid, name, str(text), tuple(choices), labels, gold, prompt=ctx, delimiter=delimiter)

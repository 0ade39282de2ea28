"""Datasets (one schema, local JSONL or HF hub), lm-eval prompts, and client/server partitions."""

from .partition import Splits, split_train
from .prompts import MCRequest, choices_of, context_of, mc_request, training_pair
from .schema import (
    ALL_TASKS,
    TASKS,
    DataError,
    Question,
    check_tasks,
    dev_split,
    eval_split,
    load_eval,
    load_split,
    resolve_data_dir,
)

__all__ = [
    "ALL_TASKS", "TASKS", "DataError", "check_tasks", "MCRequest", "Question", "Splits", "choices_of", "context_of",
    "dev_split", "eval_split", "load_eval", "load_split", "mc_request", "resolve_data_dir", "split_train",
    "training_pair",
]

"""What every recipe builds from a config: splits, models with adapters, training settings.

Server, clients and baselines all call these, so a given config means the same data, the same
adapters and the same budgets everywhere.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import resource
from dataclasses import dataclass
from pathlib import Path

import torch

from . import precision
from .config import Config, ConfigError, ModelSection, check_output_folder
from .data import Question, Splits, check_tasks, choices_of, load_eval, load_split, mc_request, split_train
from .data.schema import DataError, is_instructions, read_client_file, write_jsonl
from .models.lora import attach_lora
from .models.sources import load_model
from .updates import TrainSettings, Transfer


def dtype(cfg: Config) -> torch.dtype:
    """Weights are bf16 only where bf16 is fast; LoRA weights stay fp32 either way (PEFT upcasts them)."""
    return precision.torch_dtype(cfg.precision)


def autocast_dtype(cfg: Config) -> torch.dtype | None:
    return precision.autocast_dtype(cfg.precision)


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from a tuple (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little") & 0x7FFFFFFF


@functools.lru_cache(maxsize=4)
def _splits(tasks: tuple[str, ...], data_dir: str | None, num_clients: int, aux_fraction: float,
            aux_size: int | None, client_size: int | None, partition: str, alpha: float, seed: int,
            train_size: int | None, aux_tasks: tuple[str, ...], client_tasks: tuple[str, ...],
            unlabeled: tuple[str, ...]) -> Splits:
    per_task = {t: load_split(t, "train", data_dir) for t in tasks}
    return split_train(per_task, num_clients, aux_fraction, aux_size, client_size, partition, alpha, seed,
                       train_size, aux_tasks, client_tasks, unlabeled)


def _cut(cfg: Config) -> Splits:
    """D^a, and every D^k unless the clients have their own files (then each D^k here is empty)."""
    f, d = cfg.federation, cfg.data
    aux_tasks = tuple(d.aux_tasks if d.aux_tasks is not None else cfg.tasks)
    client_tasks = () if d.client_files is not None else tuple(cfg.tasks)
    tasks = tuple(sorted(set(aux_tasks) | set(client_tasks)))
    return _splits(tasks, cfg.data_dir, f.num_clients, f.aux_fraction, f.aux_size, f.client_size, f.partition,
                   f.alpha, cfg.seed if cfg.split_seed is None else cfg.split_seed, f.train_size, aux_tasks,
                   client_tasks, tuple(d.aux_unlabeled))


def load_aux(cfg: Config) -> list[Question]:
    """The server's D^a alone: what the server reads, never a client's file."""
    return _cut(cfg).aux


def load_splits(cfg: Config) -> Splits:
    """D^a and every D^k, deterministic in the config (each process recomputes it; nothing is sent). With
    ``data.client_files`` each D^k is its client's file: only what pools every client's data (Standalone and
    Centralized, ``fedcollm data split``) calls this then; the federation's server reads ``load_aux``."""
    splits = _cut(cfg)
    if cfg.data.client_files is None:
        return splits
    return Splits(aux=splits.aux, clients=[client_file(cfg, k) for k in range(cfg.federation.num_clients)])


def client_file(cfg: Config, partition_id: int) -> list[Question]:
    """Client ``partition_id``'s own file (``data.client_files``): see ``own_file``."""
    return own_file(cfg, Path(cfg.data.client_files[partition_id]).expanduser())


def own_file(cfg: Config, path: Path) -> list[Question]:
    """A client's own D^k file (``data.client_files`` in simulation, a SuperNode's ``data-file``): the layout of
    ``fedcollm data split`` or a task folder's plain schema (``read_client_file``), capped by ``client_size``;
    every question labeled (a client trains on answers)."""
    qs = _capped(cfg, read_client_file(path, cfg.tasks))
    unlabeled = next((q for q in qs if q.answer is None), None)
    if unlabeled is not None:
        raise DataError(f"{path}: question {unlabeled.id!r} has no answer; a client trains on answers")
    return qs


def _capped(cfg: Config, qs: list[Question]) -> list[Question]:
    """``federation.client_size`` caps a client's own file as it caps a dealt D^k."""
    cap = cfg.federation.client_size
    return qs if cap is None else qs[:cap]


def client_data(cfg: Config, partition_id: int) -> list[Question]:
    """Client ``partition_id``'s D^k: its own file (``data.client_files``), else its part of the split."""
    n = cfg.federation.num_clients
    if not 0 <= partition_id < n:
        raise DataError(f"partition-id {partition_id} is outside 0..{n - 1} (num_clients={n})")
    if cfg.data.client_files is not None:
        return client_file(cfg, partition_id)
    return load_splits(cfg).clients[partition_id]


def export_splits(cfg: Config, out_dir: str | Path) -> list[Path]:
    """Write each client's D^k to its own file (``client-K.jsonl``) and D^a to ``server-aux.jsonl``.

    In a deployment every SuperNode is given only its own file (``--node-config data-file=...``). A folder
    holding split files that this split would not overwrite (``client-7.jsonl`` of an earlier split into
    8 clients, now 4) is refused: they would be taken for part of this split (``check_split_folder``).
    """
    out = check_output_folder(out_dir, "split folder")
    splits = load_splits(cfg)
    check_split_folder(out, len(splits.clients))
    paths = []
    for k, qs in enumerate(splits.clients):
        write_jsonl(out / f"client-{k}.jsonl", qs)
        paths.append(out / f"client-{k}.jsonl")
    write_jsonl(out / "server-aux.jsonl", splits.aux)
    return paths


def preflight(cfg: Config) -> None:
    """Every cheap check of a config before anything is written or any weights are loaded.

    Data present and parseable, every client with data, the evaluation sets present, the model files
    readable and every LoRA target a module of its model, the device present, ``output_dir`` a folder,
    ``FEDCOLLM_FAULT`` well formed, and (for FedCoLLM) an LLM/SLM pair with one tokenizer: a run that
    would fail on these fails here, in one line, before a run folder exists.
    """
    from .faults import check_env
    from .models.sources import check_lora_targets, check_model_files, check_same_tokenizer, load_tokenizer

    check_env()  # FEDCOLLM_FAULT: malformed, every client would fail on it inside Ray
    check_tasks(cfg.tasks, "tasks")
    if cfg.eval.tasks is not None:
        check_tasks(cfg.eval.tasks, "eval.tasks")
    check_device(cfg)
    check_trackers(cfg)
    check_output_folder(cfg.output_dir, "output_dir")
    if cfg.data.aux_tasks is not None:
        check_tasks(cfg.data.aux_tasks, "data.aux_tasks")
    trained = sorted({*cfg.tasks, *(cfg.data.aux_tasks or [])})
    prose = [t for t in trained if is_instructions(t)]
    if prose and "choices" in (cfg.kd.target, cfg.train.objective):
        raise DataError(f"{prose[0]} is instruction data (one response a prompt): kd.target=choices and "
                        "train.objective=choices need questions with two or more choices; use tokens")
    if cfg.data.client_files is not None:  # each file is its client's to open: here only that it is there
        for k, name in enumerate(cfg.data.client_files):
            if not Path(name).expanduser().is_file():
                raise DataError(f"data.client_files[{k}]: {name} is not a file (client {k}'s D^k)")
    splits = _cut(cfg)
    if cfg.data.client_files is None:
        empty = [k for k, qs in enumerate(splits.clients) if not qs]
        if empty:
            raise DataError(f"clients {empty} would get no training data ({sum(map(len, splits.clients))} "
                            f"questions for {cfg.federation.num_clients} clients); lower federation.num_clients")
    if cfg.method == "fedcollm" and any(q.answer is None for q in splits.aux) and cfg.kd.target != "choices":
        raise DataError("D^a holds unlabeled questions (answer null): they need kd.target=choices, the tokens "
                        "target teacher-forces a gold answer they do not have")
    if cfg.method == "fedcollm" and not splits.aux:
        raise DataError("D^a is empty: the server has nothing to distil on (federation.aux_size / aux_fraction, "
                        "data.aux_tasks)")
    # a user's folder may hold one question in two of its files (ids need only be unique within a file): the
    # same task, prompt and choices is the same question
    trained = {_same_question(q): q.id for qs in (splits.aux, *splits.clients) for q in qs}
    for task, qs in eval_questions(cfg).items():
        seen = next((q for q in qs if _same_question(q) in trained), None)
        if seen is not None:
            raise DataError(f"{task}: {cfg.eval.split} question {seen.id!r} is also training question "
                            f"{trained[_same_question(seen)]!r} (the same prompt and choices, in D^a or a client's "
                            "D^k): it would be scored after training on it; keep it in one split"[:400])
    roles = [("slm", cfg.slm), *([("llm", cfg.llm)] if cfg.method == "fedcollm" else [])]
    for role, section in roles:  # every model file readable, every LoRA target a module it has
        check_model_files(section.name)
        check_lora_targets(section.name, section.lora, f"{role}.lora.targets")
    tok = load_tokenizer(cfg.slm.name)
    if cfg.method == "fedcollm":
        check_same_tokenizer(load_tokenizer(cfg.llm.name), tok, cfg.llm.name, cfg.slm.name)
    _check_choice_training(cfg, splits, tok)


def _same_question(q: Question) -> tuple:
    return q.task, mc_request(q).context, tuple(choices_of(q))


def _check_choice_training(cfg: Config, splits: Splits, tok) -> None:
    """Choice-level training needs a choice distribution per question (two or more choices, each within
    ``max_length``): a question without one is named here, before round 1, not when its batch is built."""
    from .evaluate import encode_for_choices

    parts = []
    if cfg.kd.target == "choices" and cfg.method == "fedcollm":
        parts.append(splits.aux)
    if cfg.train.objective == "choices":
        parts += splits.clients  # empty where the clients have their own files: each client checks its own
    for q in (q for qs in parts for q in qs):
        encode_for_choices(tok, q, cfg.max_length)


def eval_questions(cfg: Config) -> dict[str, list[Question]]:
    return {t: load_eval(t, cfg.data_dir, cfg.eval.split_limit(), cfg.eval.split) for t in cfg.eval_tasks()}


def load_peft(section: ModelSection, cfg: Config, seed_tag: str):
    """Frozen base + fresh LoRA adapter (initial A seeded by the config, the same in every process)."""
    model, tok = load_model(section.name, dtype=dtype(cfg))
    model = attach_lora(model, section.lora, seed=derive_seed(cfg.seed, seed_tag))
    return model.to(device(cfg)), tok


def device(cfg: Config) -> torch.device:
    """``auto``: the GPU when there is one (every process of a run then uses it), else the CPU."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def train_settings(cfg: Config, section: ModelSection, seed: int, epochs: int, max_steps: int | None,
                   progress: bool = True, batch_size: int | None = None, lr: float | None = None) -> TrainSettings:
    """The loop's settings for one model: its section's lr and batch size unless the caller (KD) overrides them."""
    return TrainSettings(lr=lr or section.lr, batch_size=batch_size or section.batch_size, epochs=epochs,
                         max_steps=max_steps,
                         max_length=cfg.max_length, grad_clip=cfg.grad_clip, autocast_dtype=autocast_dtype(cfg),
                         seed=seed, progress=progress, packed=cfg.packing, objective=cfg.train.objective)


def kd_batch_size(cfg: Config) -> int:
    """The server KD step's batch (both models see the same D^a batch): ``kd.batch_size``, else the SLM's."""
    return cfg.kd.batch_size or cfg.slm.batch_size


def _seen(n: int, epochs: int, cap: int | None, batch: int) -> int:
    """Examples a loop of ``epochs`` passes over ``n`` examples sees, stopped after ``cap`` steps of ``batch``."""
    return n * epochs if cap is None else min(n * epochs, cap * batch)


@dataclass(frozen=True)
class Budget:
    """How many training examples each method sees, all from this one place (README, "Budgets").

    Per round, client k sees ``client[k]`` examples (E passes over D^k, or ``local_max_steps`` batches)
    and the server's KD sees ``kd`` examples of D^a (``kd.epochs`` passes, or ``kd.max_steps`` batches).
    FedAvg and FedCoLLM train T rounds of that; Standalone gives client k its T·client[k] alone;
    Centralized gives the LLM the federation's total, T·(Σ client[k] + kd), on the pooled data.
    """

    rounds: int
    client: tuple[int, ...]
    kd: int
    client_loop: tuple[int, int | None]  # (epochs, max_steps) of one client's local update, per round
    kd_loop: tuple[int, int | None]  # (epochs, max_steps) of one round's KD on D^a
    pooled: int  # |∪ D^k ∪ D^a|, what Centralized trains on
    llm_batch: int

    def federated_client_examples(self) -> int:
        """FedAvg's and FedCoLLM's client-side examples over the run (FedCoLLM adds T·kd on the server)."""
        return self.rounds * sum(self.client)

    def standalone_examples(self, k: int) -> int:
        return self.rounds * self.client[k]

    def standalone_loop(self) -> tuple[int, int | None]:
        """Client k alone: T rounds' worth of its local updates in one loop."""
        epochs, cap = self.client_loop
        return self.rounds * epochs, None if cap is None else self.rounds * cap

    def centralized_examples(self) -> int:
        return self.rounds * (sum(self.client) + self.kd)

    def centralized_loop(self) -> tuple[int, int | None]:
        """Whole passes over the pooled data when the total is a whole number of them (exact), else enough
        passes, stopped after the steps of ``llm.batch_size`` that hold the total (exact to one batch)."""
        total = self.centralized_examples()
        if total % self.pooled == 0:
            return total // self.pooled, None
        return math.ceil(total / self.pooled), max(1, math.ceil(total / self.llm_batch))


def budget(cfg: Config, splits: Splits | None = None) -> Budget:
    """Every method's example counts for this config (see ``Budget``)."""
    splits = splits or load_splits(cfg)
    f, kd = cfg.federation, cfg.kd
    return Budget(rounds=f.rounds,
                  client=tuple(_seen(len(c), f.local_epochs, f.local_max_steps, cfg.slm.batch_size)
                               for c in splits.clients),
                  kd=_seen(len(splits.aux), kd.epochs, kd.max_steps, kd_batch_size(cfg)),
                  client_loop=(f.local_epochs, f.local_max_steps), kd_loop=(kd.epochs, kd.max_steps),
                  pooled=sum(map(len, splits.clients)) + sum(q.answer is not None for q in splits.aux),
                  llm_batch=cfg.llm.batch_size)


def transfer_spec(cfg: Config) -> Transfer:
    """Step 4's losses from the config's ``kd`` section."""
    llm_weight, slm_weight = cfg.kd.weights()
    return Transfer(llm_weight=llm_weight, slm_weight=slm_weight, mix=cfg.kd.mix, select=cfg.kd.select,
                    temperature=cfg.kd.temperature, top_k=cfg.kd.top_k, confidence=cfg.kd.confidence,
                    target=cfg.kd.target, token_ce=cfg.kd.token_ce)


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def evaluate_model(model, tokenizer, cfg: Config, questions: dict[str, list[Question]], adapter: bool = True,
                   progress: bool = True) -> dict[str, dict[str, float]]:
    """The scorer with the config's batch size and precision (every recipe evaluates through this)."""
    from .evaluate import evaluate_tasks

    return evaluate_tasks(model, tokenizer, list(questions), batch_size=cfg.eval.batch_size,
                          max_length=max(cfg.max_length, 512), autocast_dtype=autocast_dtype(cfg), adapter=adapter,
                          progress=progress, questions=questions)


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


def check_trackers(cfg: Config) -> None:
    """Each tracker's package is installed (MLflow is an extra: ``pip install 'fedcollm[mlflow]'``)."""
    import importlib.util

    for kind in cfg.tracking:
        if importlib.util.find_spec(TRACKER_PACKAGES[kind]) is None:
            raise ConfigError(f"tracking lists {kind}, but the {TRACKER_PACKAGES[kind]} package is not installed: "
                              f"pip install 'fedcollm[{kind}]', or drop it from tracking")


def check_device(cfg: Config) -> None:
    """``device=cuda[:N]`` needs that GPU here; without it the run would fail at the first ``.to()``,
    after its run folder exists (the config alone cannot tell: clients parse it on other machines)."""
    if not cfg.device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device} but no CUDA GPU is visible here (torch.cuda.is_available() is "
                          "False); use device=auto or device=cpu")
    index = int(cfg.device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device={cfg.device} but this machine has {torch.cuda.device_count()} CUDA GPU(s)")


SPLIT_FILE = re.compile(r"client-\d+\.jsonl|server-aux\.jsonl")


def check_split_folder(out: Path, num_clients: int) -> None:
    """Refuse a folder holding split files that a split into ``num_clients`` would not overwrite.

    Files of the same names are replaced by this split (an export is deterministic in its config); a
    ``client-K.jsonl`` beyond this split's K would stay beside them and pass for one of its clients.
    Files of other names are not ours and are left alone.
    """
    if not out.is_dir():
        return
    ours = {f"client-{k}.jsonl" for k in range(num_clients)} | {"server-aux.jsonl"}
    stale = sorted(p.name for p in out.iterdir() if SPLIT_FILE.fullmatch(p.name) and p.name not in ours)
    if stale:
        raise ConfigError(f"{out} holds split files of an earlier split that this one ({num_clients} clients) "
                          f"would leave beside its own ({', '.join(stale[:4])}{', ...' if len(stale) > 4 else ''}); "
                          "choose an empty --out or remove them")

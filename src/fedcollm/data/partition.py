"""Deterministic splits of the training data into the server's D^a and the K clients' D^k.

The paper leaves the split open; our choice (documented in README):
- D^a is cut from every task's training split (``aux_fraction`` of it, or ``aux_size`` questions per
  task), so the server's auxiliary data covers each task the clients have;
- the rest is pooled and dealt to K clients, IID (a shuffled even split) or non-IID by Dirichlet(alpha)
  over a group key: the task when several tasks are pooled (clients specialise in different tasks),
  else the gold answer position (label skew, the usual Dirichlet benchmark);
- ``client_size`` optionally caps each client's set (for small CPU budgets);
- ``train_size`` optionally subsamples each task's training split uniformly first, so that a CPU-sized
  run keeps ``aux_fraction``'s D^a : D^k proportion per task (1 : 4 at the paper's 20 %);
- who holds what (``DataSection``): D^a may be cut from other tasks than the clients' (``aux_tasks``; a task
  the clients do not hold is the server's alone), and the D^a questions of ``unlabeled`` tasks keep no answer.
Everything is a pure function of the questions and the seed, so every process (server, simulated and
deployed clients) computes the same split without exchanging data.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace

import numpy as np

from .schema import DataError, Question


@dataclass(frozen=True)
class Splits:
    aux: list[Question]
    clients: list[list[Question]]


def _dirichlet_split(groups: np.ndarray, k: int, alpha: float, rng: np.random.Generator) -> list[list[int]]:
    """Deal indices to k clients: within each group, proportions ~ Dir(alpha)."""
    for _ in range(100):  # redraw until no client is empty, like common FL benchmarks do
        parts: list[list[int]] = [[] for _ in range(k)]
        for g in np.unique(groups):
            idx = rng.permutation(np.flatnonzero(groups == g))
            cuts = (np.cumsum(rng.dirichlet([alpha] * k))[:-1] * len(idx)).astype(int)
            for c, chunk in enumerate(np.split(idx, cuts)):
                parts[c].extend(int(i) for i in chunk)
        if min(len(p) for p in parts) > 0:
            return [sorted(p) for p in parts]
    raise DataError(f"Dirichlet(alpha={alpha}) left a client with no data in 100 draws; raise alpha or lower K={k}")


def split_train(
    per_task: dict[str, list[Question]],
    num_clients: int,
    aux_fraction: float = 0.2,
    aux_size: int | None = None,
    client_size: int | None = None,
    partition: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    train_size: int | None = None,
    aux_tasks: Collection[str] | None = None,
    client_tasks: Collection[str] | None = None,
    unlabeled: Collection[str] = (),
) -> Splits:
    """Cut D^a and K client sets out of each task's training questions; disjoint and seed-deterministic.

    D^a is cut from ``aux_tasks`` and the rest of ``client_tasks`` is dealt to the clients (each: every task of
    ``per_task``). ``client_tasks`` empty: the clients' data come from elsewhere (their own files), every D^k here
    is empty. D^a questions of ``unlabeled`` tasks have ``answer=None``."""
    if num_clients < 1:
        raise DataError(f"num_clients must be >= 1, got {num_clients}")
    if partition not in ("iid", "dirichlet"):
        raise DataError(f"partition must be 'iid' or 'dirichlet', got {partition!r}")
    if not 0.0 <= aux_fraction < 1.0:
        raise DataError(f"aux_fraction must be in [0, 1), got {aux_fraction}")
    aux_from = set(per_task) if aux_tasks is None else set(aux_tasks)
    to_clients = set(per_task) if client_tasks is None else set(client_tasks)
    rng = np.random.default_rng(seed)
    aux: list[Question] = []
    pool: list[Question] = []
    for task in sorted(per_task):
        qs = per_task[task]
        order = rng.permutation(len(qs))
        if train_size is not None:  # a uniform subsample: the first train_size of the shuffled order
            qs = [qs[i] for i in order[:train_size]]
            order = rng.permutation(len(qs))
        n_aux = 0
        if task in aux_from:
            n_aux = min(aux_size, len(qs)) if aux_size is not None else int(round(aux_fraction * len(qs)))
        cut = [qs[i] for i in order[:n_aux]]
        aux += [replace(q, answer=None) for q in cut] if task in unlabeled else cut
        if task in to_clients:
            pool += [qs[i] for i in order[n_aux:]]
            blank = next((q for q in qs if q.answer is None), None)
            if blank is not None:
                raise DataError(f"{task}: question {blank.id!r} has no answer, and the clients train on this "
                                "task; a task of unlabeled questions can only be the server's (data.aux_tasks, "
                                "not tasks)")
    if not to_clients:
        return Splits(aux=aux, clients=[[] for _ in range(num_clients)])
    if len(pool) < num_clients:
        raise DataError(f"{len(pool)} training questions left after D^a cannot be dealt to {num_clients} clients")
    if partition == "iid":
        parts = [sorted(p.tolist()) for p in np.array_split(rng.permutation(len(pool)), num_clients)]
    else:
        several = len(per_task) > 1
        groups = np.array([q.task if several else str(q.answer) for q in pool])
        parts = _dirichlet_split(groups, num_clients, alpha, rng)
    clients = []
    for p in parts:
        chosen = [pool[i] for i in rng.permutation(p)] if p else []
        clients.append(chosen[:client_size] if client_size is not None else chosen)
    return Splits(aux=aux, clients=clients)

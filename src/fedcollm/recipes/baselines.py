"""The paper's baselines, each a few lines over the same loop, scorer and splits as FedCoLLM.

- Zero-Shot: the base LLM and SLM, no adapter.
- Standalone: each client tunes its own SLM adapter on its D^k alone, as many examples as its T
  federated local updates would see; reported as the mean over clients.
- FedAvg: ``run_fedcollm`` with ``method=fedavg`` (Algorithm 1 without the server's LLM and step 4).
- Centralized: the LLM adapter tuned on the union of every D^k and D^a, as many examples as the whole
  federation trains on, T·(Σ_k client examples + KD examples).

Every count comes from ``build.budget`` (README, "Budgets"): the methods see the same examples by
construction.
"""

from __future__ import annotations

import numpy as np

from ..build import budget, derive_seed, eval_questions, evaluate_model, load_peft, load_splits, train_settings
from ..config import Config
from ..models.lora import get_adapter_arrays
from ..updates import local_update

Metrics = dict[str, dict[str, float]]


def _evaluate(model, tok, cfg: Config, adapter: bool = True) -> Metrics:
    return evaluate_model(model, tok, cfg, eval_questions(cfg), adapter)


def zero_shot(cfg: Config) -> dict[str, Metrics]:
    out = {}
    for role, section in (("llm", cfg.llm), ("slm", cfg.slm)):
        model, tok = load_peft(section, cfg, role)
        out[role] = _evaluate(model, tok, cfg, adapter=False)
        del model
    return out


def standalone(cfg: Config) -> dict[str, Metrics]:
    """Each client alone; ``slm`` holds the mean over clients, ``clients`` each client's metrics."""
    model, tok = load_peft(cfg.slm, cfg, "slm")
    theta0 = get_adapter_arrays(model)
    per_client = []
    epochs, max_steps = budget(cfg).standalone_loop()
    for k, data in enumerate(load_splits(cfg).clients):
        settings = train_settings(cfg, cfg.slm, derive_seed(cfg.seed, "standalone", k), epochs, max_steps)
        local_update(model, tok, theta0, data, settings, desc=f"standalone client {k}")
        per_client.append(_evaluate(model, tok, cfg))
    mean = {t: {**{m: float(np.mean([c[t][m] for c in per_client])) for m in ("acc", "acc_norm")},
                "n": per_client[0][t]["n"]} for t in per_client[0]}  # every client scores the same questions
    return {"slm": mean, "clients": per_client}


def centralized(cfg: Config) -> dict[str, Metrics]:
    """The LLM adapter on all the data the federation has (every D^k and D^a), same number of passes."""
    model, tok = load_peft(cfg.llm, cfg, "llm")
    splits = load_splits(cfg)
    data = [q for client in splits.clients for q in client] + splits.aux
    epochs, max_steps = budget(cfg, splits).centralized_loop()
    settings = train_settings(cfg, cfg.llm, derive_seed(cfg.seed, "centralized"), epochs, max_steps)
    local_update(model, tok, None, data, settings, desc="centralized LLM")
    return {"llm": _evaluate(model, tok, cfg)}

"""What the server holds: the LLM with its private adapter ω, a copy of the SLM for θ, D^a, eval sets.

ω never leaves this object: only θ is ever put into a Flower message.
"""

from __future__ import annotations

import logging

from ..build import (
    derive_seed,
    eval_questions,
    evaluate_model,
    kd_batch_size,
    load_aux,
    load_peft,
    train_settings,
    transfer_spec,
)
from ..config import Config
from ..models.lora import NamedArrays, count_parameters, get_adapter_arrays, set_adapter_arrays
from ..models.sources import check_same_tokenizer
from ..updates import mutual_transfer

log = logging.getLogger(__name__)


class CoTuningServer:
    def __init__(self, cfg: Config, progress: bool = True) -> None:
        self.cfg = cfg
        self.progress = progress
        self.slm, self.tokenizer = load_peft(cfg.slm, cfg, "slm")
        self.llm = None  # the FedAvg baseline has no server LLM
        if cfg.method == "fedcollm":
            self.llm, llm_tok = load_peft(cfg.llm, cfg, "llm")
            check_same_tokenizer(llm_tok, self.tokenizer, cfg.llm.name, cfg.slm.name,
                                 self.llm.get_output_embeddings().weight.shape[0],
                                 self.slm.get_output_embeddings().weight.shape[0])
        self.aux = load_aux(cfg)
        self.eval_sets = eval_questions(cfg)

    @property
    def theta(self) -> NamedArrays:
        return get_adapter_arrays(self.slm)

    def set_theta(self, theta: NamedArrays) -> None:
        set_adapter_arrays(self.slm, theta)

    def distil(self, theta_avg: NamedArrays, server_round: int) -> dict[str, float]:
        """Step 4: mutual KD on D^a from θ^{t,0}; leaves θ^{t+1} on the SLM and ω^{t+1} on the LLM.

        Without an LLM (the FedAvg baseline) θ^{t+1} = θ^{t,0}.
        """
        cfg = self.cfg
        if self.llm is None:
            self.set_theta(theta_avg)
            return {}
        epochs, max_steps = cfg.kd.epochs, cfg.kd.max_steps  # Budget.kd_loop, without reading any D^k
        settings = train_settings(cfg, cfg.slm, derive_seed(cfg.seed, "server", server_round), epochs, max_steps,
                                  self.progress, batch_size=kd_batch_size(cfg), lr=cfg.kd.slm_lr)
        _, metrics = mutual_transfer(self.llm, self.slm, self.tokenizer, theta_avg, self.aux,
                                     cfg.kd.llm_lr or cfg.llm.lr, settings, transfer_spec(cfg))
        return metrics

    def evaluate(self, adapters: bool = True) -> dict[str, dict[str, dict[str, float]]]:
        """Accuracy of the LLM (f_{ψ+ω}) and the global SLM (g_{φ+θ}); base models with ``adapters=False``."""
        cfg = self.cfg
        out = {}
        for role, model in (("llm", self.llm), ("slm", self.slm)):
            if model is None:
                continue
            out[role] = evaluate_model(model, self.tokenizer, cfg, self.eval_sets, adapters, self.progress)
        return out

    def parameter_counts(self) -> dict[str, dict[str, int]]:
        counts = {"slm": count_parameters(self.slm)}
        if self.llm is not None:
            counts["llm"] = count_parameters(self.llm)
        return counts

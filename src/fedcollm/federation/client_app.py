"""The Flower ClientApp: Algorithm 1 step 2 on a client's own D^k.

A client receives θ^t, trains E local epochs of the task loss on its private data and replies with
θ_k, its example count (FedAvg's weight) and metrics. Raw data never leaves: the reply holds only the
adapter arrays and scalar metrics.

Memory: one frozen SLM base is loaded per worker process and kept in ``_WORKER`` for every client
that this process runs (simulation runs all K clients in one worker by default); clients only swap the
adapter arrays. ``_WORKER`` must be reached through module-level functions so that the ClientApp's
closure, pickled to Ray actors, does not carry a copy of it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod

from .. import faults
from ..build import client_data, derive_seed, load_peft, own_file, peak_rss_mb, train_settings
from ..config import Config, config_from_text
from ..data import Question
from ..models.lora import check_adapter_arrays, get_adapter_arrays
from ..updates import local_update
from .privacy import CLIPPING_NORM_KEY
from .secagg import legacy_fit_mod, secagg_mod
from .update_cache import UpdateCache, update_key
from .wire import codec_mod, from_record, layout_of, to_record

log = logging.getLogger(__name__)
_WORKER: dict[str, object] = {"key": None, "model": None, "tokenizer": None, "loads": 0}


def worker_slm(cfg: Config):
    """The SLM + LoRA shared by every client on this worker process (loaded once per model/adapter spec)."""
    key = repr((cfg.slm.name, cfg.slm.lora, cfg.precision))
    if _WORKER["key"] != key:
        _WORKER["model"], _WORKER["tokenizer"] = load_peft(cfg.slm, cfg, "slm")
        _WORKER["key"] = key
        _WORKER["loads"] = int(_WORKER["loads"]) + 1
    return _WORKER["model"], _WORKER["tokenizer"]


CONFIG_KEY = "fedcollm-config"


def client_config(msg: Message, context: Context) -> Config:
    """The run's config as the server sent it, with this node's own data location when it has one."""
    cfg = config_from_text(str(msg.content["config"][CONFIG_KEY]), "config from the server")
    if "data-dir" in context.node_config:  # deployment: each SuperNode points at its own data
        cfg.data_dir = str(context.node_config["data-dir"])
    return cfg


def node_data(cfg: Config, context: Context) -> list[Question]:
    """This client's D^k: its own file when the node was given one (deployment), else its partition."""
    node = context.node_config
    if "data-file" in node:
        return own_file(cfg, Path(str(node["data-file"])))
    return client_data(cfg, int(node["partition-id"]))


def client_train(cfg: Config, partition_id: int, msg: Message, data: list[Question]) -> Message:
    """Set θ^t, run E epochs of ℓ_TA on D^k, reply θ_k with num-examples for the weighted mean."""
    model, tok = worker_slm(cfg)
    mine = get_adapter_arrays(model)
    theta = from_record(msg.content["arrays"], layout_of(mine))
    check_adapter_arrays(mine, theta, who=f"server broadcast to client {partition_id}")
    server_round = int(msg.content["config"]["server-round"])
    fault = faults.planned(partition_id, server_round)
    faults.before_training(fault)
    settings = train_settings(cfg, cfg.slm, derive_seed(cfg.seed, "client", server_round, partition_id),
                              cfg.federation.local_epochs, cfg.federation.local_max_steps, progress=False)
    theta_k, m = cached_update(cfg, theta, data, settings.seed, lambda: local_update(
        model, tok, theta, data, settings, desc=f"client {partition_id}", proximal_mu=cfg.federation.proximal_mu))
    reply = RecordDict({
        "arrays": to_record(faults.corrupt(fault, theta_k)),
        "metrics": MetricRecord({
            "num-examples": len(data),
            "train-loss": float(m.get("task_loss", m.get("loss", 0.0))),  # ℓ_TA, without FedProx's term
            "proximal-term": float(m.get("proximal", 0.0)),
            "train-steps": int(m["steps"]),
            "train-tokens": int(m["tokens"]),
            "partition-id": partition_id,
            "slm-loads-in-worker": int(_WORKER["loads"]),
            "worker-peak-rss-mb": peak_rss_mb(),
        }),
    })
    log.info("client %d round %d: %d examples, loss %.4f", partition_id, server_round, len(data), m.get("loss", 0))
    return Message(reply, reply_to=msg)


def cached_update(cfg: Config, theta, data: list[Question], seed: int, compute):
    """``compute()`` (the local update), read from ``federation.update_cache`` when these inputs ran before."""
    if cfg.federation.update_cache is None:
        return compute()
    cache = UpdateCache(cfg.federation.update_cache)
    key = update_key(cfg, theta, data, seed)
    hit = cache.get(key)
    if hit is not None:
        log.info("local update read from %s (same inputs as an earlier run)", cache.folder)
        return hit
    theta_k, metrics = compute()
    cache.put(key, theta_k, metrics)
    return theta_k, metrics


def dp_clip_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's ``fixedclipping_mod`` (clip Δθ_k to the norm the server sends) when the run uses DP."""
    config = msg.content.config_records.get("config")
    if config is not None and CLIPPING_NORM_KEY in config:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


# The one ClientApp, for the simulation and the deployment engine alike (it lives in an importable
# module so that Ray workers import it instead of unpickling a copy, and ``_WORKER`` persists).
# Mods, outermost first: SecAgg+ masks what the bridge hands it; the bridge turns SecAgg+'s legacy
# fit messages into ours; the codec decodes a bf16 transfer; DP clipping sees float32 θ and bounds
# the update before anything else.
app = ClientApp(mods=[secagg_mod, legacy_fit_mod, codec_mod, dp_clip_mod])


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = client_config(msg, context)
    return client_train(cfg, int(context.node_config["partition-id"]), msg, node_data(cfg, context))

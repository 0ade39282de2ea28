"""A client's local updates memoized by their inputs, so that runs which differ only after step 2 share it.

A local update (Algorithm 1, step 2) is a deterministic function of θ^t, the client's D^k as the model sees
it (each question's training prompt and answer), the SLM and its adapter spec, the training settings (lr,
batch, epochs, steps, length, clipping, packing, FedProx's μ), where and how it is computed (the resolved
device and precision), the code that computes it (the training loop, the losses, the prompt format, the
adapter plumbing) and the update's seed. A dev sweep of KD transfers trains K identical round-1 updates per
variant (every variant broadcasts the same initial θ^1): with ``federation.update_cache`` a client computes
each of those once, and the other variants read it back. The key is the sha256 of all of those, plus the
versions of fedcollm and torch, so an update from another device, precision, prompt or loss is never
served for this one.

The cache lives where the client runs (in deployment, on the client's own disk) and holds only what that
client would send anyway, before any fault, DP clipping or SecAgg+ masking is applied to the reply.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from ..build import device
from ..config import Config
from ..data import Question
from ..data.prompts import training_pair
from ..models.lora import NamedArrays
from ..precision import resolve_precision

#: the modules whose code decides a local update's result: a change to any of them is a new key
UPDATE_CODE = ("fedcollm.data.prompts", "fedcollm.train", "fedcollm.losses", "fedcollm.updates",
               "fedcollm.evaluate", "fedcollm.models.lora", "fedcollm.build", "fedcollm.federation.client_app")


@functools.cache
def code_digest(modules: tuple[str, ...] = UPDATE_CODE) -> str:
    """sha256 of the source files of ``modules`` (read once per process)."""
    h = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        h.update(name.encode())
        h.update(Path(spec.origin).read_bytes() if spec is not None and spec.origin else b"?")
    return h.hexdigest()


def update_key(cfg: Config, theta: NamedArrays, data: list[Question], seed: int) -> str:
    """sha256 of everything a local update depends on (see the module docstring)."""
    f, s = cfg.federation, cfg.slm
    h = hashlib.sha256()
    h.update(json.dumps({
        "fedcollm": version("fedcollm"), "torch": torch.__version__, "code": code_digest(), "slm": s.name,
        "lora": repr(s.lora), "lr": s.lr, "batch": s.batch_size, "epochs": f.local_epochs,
        "max_steps": f.local_max_steps, "max_length": cfg.max_length, "grad_clip": cfg.grad_clip,
        "precision": resolve_precision(cfg.precision), "device": str(device(cfg)), "proximal_mu": f.proximal_mu,
        "seed": seed, "packing": cfg.packing, "objective": cfg.train.objective,
    }, sort_keys=True).encode())
    for q in data:  # the questions as the model is trained on them: a prompt change is a new key
        h.update(repr((q.id, q.task, training_pair(q), q.choices, q.answer)).encode())
    for name, value in theta:
        h.update(name.encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


class UpdateCache:
    """``folder/KEY.safetensors`` (θ_k) beside ``folder/KEY.json`` (the update's metrics), each written atomically."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def get(self, key: str) -> tuple[NamedArrays, dict[str, float]] | None:
        arrays, meta = self.folder / f"{key}.safetensors", self.folder / f"{key}.json"
        if not (arrays.is_file() and meta.is_file()):
            return None
        saved = json.loads(meta.read_text())
        tensors = load_file(str(arrays))
        return [(name, tensors[name]) for name in saved["order"]], saved["metrics"]

    def put(self, key: str, theta: NamedArrays, metrics: dict[str, float]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        tmp_arrays, tmp_meta = self.folder / f".{key}.{pid}.safetensors", self.folder / f".{key}.{pid}.json"
        save_file({name: np.ascontiguousarray(v) for name, v in theta}, str(tmp_arrays))
        tmp_meta.write_text(json.dumps({"order": [name for name, _ in theta],
                                        "metrics": {k: float(v) for k, v in metrics.items()}}))
        tmp_arrays.replace(self.folder / f"{key}.safetensors")  # the arrays first: get() needs both files
        tmp_meta.replace(self.folder / f"{key}.json")

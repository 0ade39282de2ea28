"""Choose on dev, report on test: the experiment's two phases for every method.

1. **Tune** (``sealed``): the method trains and is evaluated on the dev split only, every round; the
   test splits are sealed (``FEDCOLLM_SEAL_TEST``), so any code path that reads a test question fails.
   Its final adapters are kept as PEFT folders in ``OUT/adapters/METHOD/`` (``llm``, ``slm``, or
   ``slm-client-K`` for Standalone's K clients).
2. **Report** (``score_on_test``): the seal is lifted and each saved adapter is scored once on the test
   split. Nothing is trained in this phase and nothing is chosen from it.

The dev results land in ``methods/METHOD.dev.json``, the test results in ``methods/METHOD.json``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..build import eval_questions, evaluate_model, load_peft
from ..config import Config
from ..data.schema import SEAL_ENV
from ..models.lora import load_adapter
from ..runlog import RunDir
from . import baselines


@contextlib.contextmanager
def sealed() -> Iterator[None]:
    """The test splits sealed in this process and every process it starts (Flower's simulated clients)."""
    before = os.environ.get(SEAL_ENV)
    os.environ[SEAL_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(SEAL_ENV, None)
        else:
            os.environ[SEAL_ENV] = before


def on_split(cfg: Config, split: str) -> Config:
    c = copy.deepcopy(cfg)
    c.eval.split = split
    return c


def adapters_dir(out: Path, method: str) -> Path:
    return out / "adapters" / method


def keep_run_adapters(run: RunDir, folder: Path) -> None:
    """A federated run's last round, θ as ``slm`` and ω as ``llm`` (what the test phase scores)."""
    last = run.round_dir(run.last_round())
    for part, role in (("theta", "slm"), ("omega", "llm")):
        if (last / part).is_dir():
            shutil.rmtree(folder / role, ignore_errors=True)
            shutil.copytree(last / part, folder / role)


def adapter_digest(folder: Path) -> str | None:
    """sha256 of an adapter's weights file (None without one): equal digests, bit-identical adapters."""
    weights = folder / "adapter_model.safetensors"
    return hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None


def scored_twin(out: Path, method: str, role: str) -> tuple[str, dict] | None:
    """(another method, its test result for ``role``) whose saved ``role`` adapter is bit-identical to
    ``method``'s (FedCoLLM's LLM is no_kd's when its KL toward the SLM has weight 0): scored once, reused."""
    mine = adapter_digest(adapters_dir(out, method) / role)
    if mine is None:
        return None
    for other in sorted(p.stem for p in (out / "methods").glob("*.json") if not p.name.endswith(".dev.json")):
        if other != method and adapter_digest(adapters_dir(out, other) / role) == mine:
            result = json.loads((out / "methods" / f"{other}.json").read_text())
            if role in result:
                return other, result[role]
    return None


def score_on_test(cfg: Config, out: Path, method: str) -> dict:
    """The method's test accuracy: the base models (Zero-Shot) or its saved adapters, scored once. An adapter
    bit-identical to one already scored in this folder is not scored again: its result is reused, and said to
    be (``identical_to``)."""
    test = on_split(cfg, "test")
    if method == "zero_shot":
        return baselines.zero_shot(test)
    folder = adapters_dir(out, method)
    questions = eval_questions(test)
    result: dict = {}
    for role, section in (("llm", cfg.llm), ("slm", cfg.slm)):
        saved = sorted(folder.glob(f"{role}-client-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
        single = folder / role
        if not saved and not single.is_dir():
            continue
        twin = None if saved else scored_twin(out, method, role)
        if twin is not None:
            result[role] = twin[1]
            result.setdefault("identical_to", {})[role] = twin[0]
            continue
        model, tok = load_peft(section, test, role)
        per = []
        for adapter in saved or [single]:
            load_adapter(model, adapter)
            per.append(evaluate_model(model, tok, test, questions))
        del model
        if saved:  # Standalone: the mean over the clients, each client's own figures beside it
            result[role], result["clients"] = baselines.client_mean(per), per
        else:
            result[role] = per[0]
    if not result:
        raise FileNotFoundError(f"no saved adapters of {method} in {folder}")
    return result

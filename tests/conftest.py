"""Fixtures made on the fly: a tiny byte-level BPE tokenizer, tiny random Qwen2 models, a data dir.

Nothing here downloads anything; the whole default suite runs in minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

WORDS = ("the a of to in is what which why how does plant animal water energy sun light heat rock soil "
         "cell food air gas liquid solid moon earth star bank library mall store person money school "
         "magnet metal wood plastic glass river ocean cloud rain snow wind grow eat move change").split()
TASK_DIRS = {
    "arc_easy": ("arc_easy", ("train", "dev", "test")),
    "arc_challenge": ("arc_challenge", ("train", "dev", "test")),
    "openbookqa": ("obqa", ("train", "dev", "test")),
    "commonsense_qa": ("csqa", ("train", "dev")),
}


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def make_record(rng: random.Random, task: str, i: int, split: str) -> dict:
    n = 5 if task == "commonsense_qa" else 4
    digits = task.startswith("arc") and i % 7 == 3  # some ARC questions use digit labels
    labels = [str(k + 1) for k in range(n)] if digits else list("ABCDE"[:n])
    stem = _sentence(rng, 4, 12).capitalize() + ("?" if task != "openbookqa" else "")
    choices = [{"label": lab, "text": _sentence(rng, 1, 4)} for lab in labels]
    q = {"stem": stem, "choices": choices}
    if task == "commonsense_qa":
        q["question_concept"] = rng.choice(WORDS)
    return {"id": f"{task}-{split}-{i}", "question": q, "answerKey": rng.choice(labels)}


def write_data_dir(root: Path, n_train: int = 60, n_eval: int = 12, seed: int = 0) -> Path:
    rng = random.Random(seed)
    for task, (sub, splits) in TASK_DIRS.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        for split in splits:
            n = n_train if split == "train" else n_eval
            lines = [json.dumps(make_record(rng, task, i, split)) for i in range(n)]
            (root / sub / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def build_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    rng = random.Random(1)
    corpus = [_sentence(rng, 5, 20) + "\nQuestion: Answer: A. B. C. D. E. ?" for _ in range(300)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(out)
    return fast


def build_model(out: Path, vocab: int, hidden: int, layers: int, seed: int) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, eos_token_id=0, pad_token_id=0, bos_token_id=None)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # larger random weights so choices get clearly different scores
        for p in model.parameters():
            p.mul_(4.0) if p.dim() > 1 else None
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Two tiny Qwen2 models (an 'slm' and an 'llm') sharing one tokenizer, saved as HF folders."""
    root = tmp_path_factory.mktemp("models")
    tok = build_tokenizer(root / "tok")
    out = {}
    for name, hidden, layers, seed in (("slm", 32, 2, 0), ("llm", 64, 3, 1)):
        build_model(root / name, len(tok), hidden, layers, seed)
        tok.save_pretrained(root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return write_data_dir(tmp_path_factory.mktemp("data"))


@pytest.fixture(autouse=True)
def in_process(request, monkeypatch):
    """Runs go through ``inprocess.simulate_in_process`` (our ServerApp body and ClientApp in this process) instead
    of a SuperLink, ``flwr run`` and Ray: the same rounds without the processes. A test marked ``flower`` keeps
    Flower's real path end to end (as does any ``fedcollm`` started as a subprocess)."""
    if request.node.get_closest_marker("flower"):
        return
    from inprocess import simulate_in_process

    import fedcollm.recipes.fedcollm as recipe

    monkeypatch.setattr(recipe, "simulate", simulate_in_process)


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs ``-n auto``), each worker takes an equal share of the cores for
    torch: two workers of two threads each on two cores would make every matmul wait on the other's."""
    import os

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(config, items):
    """The end-to-end Flower tests run one after another on one worker (``--dist loadgroup``): each starts a
    SuperLink, ``flwr run`` and a Ray cluster, and two of those side by side would race for the cores their
    timeouts are sized for. The deployment tests join them: they take free ports, which a test on the other
    worker could take between the check and the bind."""
    for item in items:
        if item.get_closest_marker("flower") or item.path.name == "test_deployment.py":
            item.add_marker(pytest.mark.xdist_group("flower"))

"""Greedy replies of llama.cpp (llama-cpp-python) on the exported GGUF files vs transformers on base + adapter.

Run from the repository root after export.sh:  .venv/bin/python results/export/llama_cpp_check.py
Writes results/export/llama_cpp.json. transformers runs in fp32 (the bf16 weights upcast, as llama.cpp's
CPU path computes); the prompt is the chat template's, tokenized by HF and fed to llama.cpp as token ids,
after checking that llama.cpp's own tokenizer (from the GGUF metadata) gives the same ids.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import llama_cpp
import numpy as np
import torch

from fedcollm.generate import generate, prompt_ids
from fedcollm.models import offline
from fedcollm.models.lora import load_adapter_model
from fedcollm.models.sources import load_model

EXPORTS = Path(os.environ.get("EXPORTS", "/tmp/fedcollm-export"))
THETA = "results/dev-sweep/demo/full-dev/adapters/llm-weight-0/theta"
SLM = "qwen2.5-coder-0.5b-instruct"
PROMPTS = ("Write a Python function that returns the square of a number.",
           "What is the boiling point of water at sea level?",
           "Name three primary colors.")
N = 32


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def last_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float().numpy()


def main() -> int:
    base, tok = load_model(SLM, dtype=torch.float32)
    plain = {p: generate(base, tok, p, max_new_tokens=N, stream=False) for p in PROMPTS}
    base_logits = {p: last_logits(base, prompt_ids(tok, p)) for p in PROMPTS}
    model = load_adapter_model(base, THETA)
    want = {p: generate(model, tok, p, max_new_tokens=N, stream=False) for p in PROMPTS}
    want_logits = {p: last_logits(model, prompt_ids(tok, p)) for p in PROMPTS}
    setups = {"merged bf16 GGUF": (EXPORTS / "slm-bf16.gguf", None),
              "merged q8_0 GGUF": (EXPORTS / "slm-q8_0.gguf", None),
              "original Q4_K_M base GGUF + LoRA GGUF": (offline.cache_dir() / "gguf" / f"{SLM}.gguf",
                                                        EXPORTS / "slm-lora.gguf")}
    result = {"llama_cpp_python": llama_cpp.__version__, "max_new_tokens": N, "transformers": want,
              "transformers_base_without_adapter": plain,
              "adapter_moves_last_logits_by": {p: float(np.abs(want_logits[p] - base_logits[p]).max())
                                               for p in PROMPTS},
              "runs": {}}
    for name, (path, lora) in setups.items():
        t0 = time.perf_counter()
        llm = llama_cpp.Llama(model_path=str(path), lora_path=str(lora) if lora else None, n_ctx=512, n_threads=2,
                              logits_all=True, verbose=False)
        rows = []
        for p in PROMPTS:
            ids = prompt_ids(tok, p)
            llm.reset()
            llm.eval(ids)
            cpp_logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            same_tokens = llm.tokenize(tok.decode(ids).encode(), add_bos=False, special=True) == ids
            got = llm.create_completion(ids, max_tokens=N, temperature=0.0, top_k=1, repeat_penalty=1.0)
            text = got["choices"][0]["text"]
            a, b = tok(want[p], add_special_tokens=False)["input_ids"], tok(text, add_special_tokens=False)["input_ids"]
            rows.append({"prompt": p, "tokenizer_agrees": same_tokens, "reply": text, "identical": text == want[p],
                         "common_prefix_tokens": common_prefix(a, b), "reply_tokens": len(a),
                         "max_abs_last_logit_diff_vs_adapter": float(np.abs(cpp_logits - want_logits[p]).max()),
                         "max_abs_last_logit_diff_vs_base": float(np.abs(cpp_logits - base_logits[p]).max())})
        result["runs"][name] = {"file": str(path), "lora": str(lora) if lora else None, "prompts": rows,
                                "identical": sum(r["identical"] for r in rows),
                                "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{name}: {result['runs'][name]['identical']}/{len(PROMPTS)} identical greedy replies")
        del llm
    Path("results/export/llama_cpp.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``fedcollm generate``: greedy (really argmax, whatever the model folder suggests), seeded sampling, the chat
template, streaming, and the same reply from base + adapter as from its exports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fedcollm.cli import main
from fedcollm.config import LoraSpec
from fedcollm.generate import generate, load_for_generation, prompt_ids
from fedcollm.models.lora import attach_lora, save_adapter
from fedcollm.models.sources import load_model

PROMPT = "what is the sun"
TEMPLATE = "{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}" \
           "{% if add_generation_prompt %}assistant:{% endif %}"


def make_adapter(base: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter with random B matrices (a fresh one, B = 0, would not change any reply)."""
    model, _ = load_model(str(base), dtype=torch.float32)
    peft = attach_lora(model, LoraSpec(r=4, alpha=8, dropout=0.0, targets=["q_proj", "v_proj", "down_proj"]), seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return save_adapter(peft, out)


@pytest.fixture(scope="module")
def base(tiny_models, tmp_path_factory) -> Path:
    """The tiny SLM with a chat template and a generation_config that suggests sampling and a repetition
    penalty: ``generate`` must not apply them unless asked."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("gen") / "slm"
    shutil.copytree(tiny_models["slm"], out)
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(out)
    (out / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 0.7, "top_k": 3, "repetition_penalty": 2.0, "eos_token_id": 0}))
    return out


@pytest.fixture(scope="module")
def adapter(base, tmp_path_factory) -> Path:
    return make_adapter(base, tmp_path_factory.mktemp("gen-adapter") / "a", 5)


def argmax_reply(model, tok, prompt: str, n: int) -> str:
    """Greedy decoding by hand: the reference for what "greedy" must mean."""
    ids = torch.tensor([prompt_ids(tok, prompt)])
    new = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(ids).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return tok.decode(new, skip_special_tokens=True)


def test_prompt_goes_through_the_chat_template(base):
    _, tok = load_model(str(base), dtype=torch.float32)
    text = tok.decode(prompt_ids(tok, PROMPT))
    assert text == f"<|endoftext|>user: {PROMPT}\nassistant:"
    assert tok.decode(prompt_ids(tok, PROMPT, chat=False)) == PROMPT


def test_greedy_is_argmax_whatever_the_model_folder_suggests(base, adapter):
    model, tok, _ = load_for_generation(str(base), str(adapter))
    got = generate(model, tok, PROMPT, max_new_tokens=12, stream=False)
    assert got == argmax_reply(model, tok, PROMPT, 12) and got
    assert got == generate(model, tok, PROMPT, max_new_tokens=12, stream=False)  # the same every time
    plain, _, _ = load_for_generation(str(base))
    assert generate(plain, tok, PROMPT, max_new_tokens=12, stream=False) != got  # the adapter is applied


def test_sampling_is_seeded(base):
    model, tok, _ = load_for_generation(str(base))
    a = generate(model, tok, PROMPT, max_new_tokens=16, temperature=1.5, seed=1, stream=False)
    assert a == generate(model, tok, PROMPT, max_new_tokens=16, temperature=1.5, seed=1, stream=False)
    others = {generate(model, tok, PROMPT, max_new_tokens=16, temperature=1.5, seed=s, stream=False) for s in (2, 3)}
    assert others != {a}


def test_cli_streams_the_same_reply_from_the_adapter_and_its_exports(base, adapter, tmp_path, capsys):
    model, tok, _ = load_for_generation(str(base), str(adapter))
    want = argmax_reply(model, tok, PROMPT, 10)
    for fmt, out in (("hf", tmp_path / "hf"), ("gguf-lora", tmp_path / "lora.gguf"), ("gguf", tmp_path / "m.gguf")):
        assert main(["export", "--adapter", str(adapter), "--model", str(base), "--role", "slm", "--format", fmt,
                     "--quant", {"hf": "f32", "gguf": "f32", "gguf-lora": "f32"}[fmt], "--out", str(out)]) == 0
    capsys.readouterr()
    common = [PROMPT, "--max-new-tokens", "10", "--precision", "fp32", "--cache", str(tmp_path / "cache")]
    for argv in (["--model", str(base), "--adapter", str(adapter)], ["--export", str(tmp_path / "hf")],
                 ["--model", str(base), "--export", str(tmp_path / "lora.gguf")],
                 ["--export", str(tmp_path / "m.gguf")]):
        assert main(["generate", *argv, *common]) == 0
        assert capsys.readouterr().out.strip() == want.strip(), argv


@pytest.mark.parametrize("argv,needle", [
    (["--model", "M", "--adapter", "A", "--export", "E"], "not both"),
    (["--model", "M", "--temperature", "-1"], "--temperature must be >= 0"),
    (["--model", "M", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--model", "M", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--export", "/nonexistent/x.gguf"], "does not exist"),
    ([], "give --model"),
])
def test_generate_refusals_are_one_line_exit_2(argv, needle, base, adapter, capsys):
    argv = [str(base) if a == "M" else str(adapter) if a == "A" else str(base) if a == "E" else a for a in argv]
    assert main(["generate", PROMPT, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("fedcollm: error:") and needle in err, err


def test_exported_lora_needs_its_base_and_a_whole_model_refuses_one(base, adapter, tmp_path, capsys):
    lora, hf = tmp_path / "a.gguf", tmp_path / "hf"
    for fmt, out in (("gguf-lora", lora), ("hf", hf)):
        assert main(["export", "--adapter", str(adapter), "--model", str(base), "--role", "slm", "--format", fmt,
                     "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["generate", PROMPT, "--export", str(lora)]) == 2
    assert "give its base with --model" in capsys.readouterr().err
    assert main(["generate", PROMPT, "--export", str(hf), "--model", str(base)]) == 2
    assert "is a whole model; drop --model" in capsys.readouterr().err

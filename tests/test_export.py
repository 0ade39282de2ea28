"""``fedcollm export``: merged HF folder, GGUF (bf16 / q8_0) and LoRA GGUF, checked against base + adapter.

The adapters here have random non-zero B matrices (a fresh LoRA has B = 0, and merging it would change
nothing, so a test of the merge could not fail). The slow tests at the end use the real 0.5B SLM and the
committed demo adapter, and llama.cpp when ``llama-cpp-python`` is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from fedcollm.cli import main
from fedcollm.config import LoraSpec, load_config, save_config
from fedcollm.models.lora import attach_lora, load_adapter_model, save_adapter
from fedcollm.models.sources import load_model

TEMPLATE = "{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}" \
           "{% if add_generation_prompt %}assistant:{% endif %}"
SPEC = LoraSpec(r=4, alpha=8, dropout=0.0, targets=["q_proj", "v_proj", "o_proj", "down_proj"])
IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 64, 120, 11]])


def make_adapter(base: Path, out: Path, seed: int, scale: float = 0.3) -> Path:
    """A LoRA adapter of ``base`` whose B matrices are random (so merging it changes the model)."""
    model, _ = load_model(str(base), dtype=torch.float32)
    peft = attach_lora(model, SPEC, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return save_adapter(peft, out)


@pytest.fixture(scope="module")
def base(tiny_models, tmp_path_factory) -> Path:
    """The tiny SLM with a chat template (the export must carry it)."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("base") / "slm"
    shutil.copytree(tiny_models["slm"], out)
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(base, tiny_models, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"r1": make_adapter(base, root / "r1", 1), "r2": make_adapter(base, root / "r2", 2),
            "llm": make_adapter(tiny_models["llm"], root / "llm", 3),
            "huge": make_adapter(base, root / "huge", 4, scale=1e6)}  # merged weights beyond f16's 65504


@pytest.fixture(scope="module")
def run_dir(base, tiny_models, adapters, tmp_path_factory) -> Path:
    """A run folder: rounds 1 and 2 finished (θ = r1, r2), round 3 unfinished (no DONE)."""
    run = tmp_path_factory.mktemp("runs") / "demo"
    run.mkdir()
    save_config(load_config(None, [f"slm.name={base}", f"llm.name={tiny_models['llm']}"]), run / "config.yaml")
    for t, theta, done in ((1, "r1", True), (2, "r2", True), (3, "r1", False)):
        folder = run / "rounds" / f"{t:03d}"
        shutil.copytree(adapters[theta], folder / "theta")
        shutil.copytree(adapters["llm"], folder / "omega")
        if done:
            (folder / "DONE").write_text("done\n")
    return run


def logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(IDS).logits.float().numpy()


def tuned(base: Path, adapter: Path):
    model, _ = load_model(str(base), dtype=torch.float32)
    return load_adapter_model(model, adapter)


def merged_state(base: Path, adapter: Path) -> dict[str, np.ndarray]:
    """W + (alpha/r)·B·A computed here by hand from the adapter file (not by PEFT's merge)."""
    from safetensors.numpy import load_file

    model, _ = load_model(str(base), dtype=torch.float32)
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    lora = load_file(str(adapter / "adapter_model.safetensors"))
    for key, a in lora.items():
        if ".lora_A." in key:
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            b = lora[key.replace("lora_A", "lora_B")]
            state[module + ".weight"] += (SPEC.alpha / SPEC.r) * (b @ a)
    return state


def export(capsys, *args) -> tuple[int, str]:
    code = main(["export", *map(str, args)])
    return code, capsys.readouterr().err.strip()


def test_hf_export_of_a_run_is_base_plus_its_last_finished_adapter(base, adapters, run_dir, tmp_path, capsys):
    out = tmp_path / "slm-hf"
    assert export(capsys, run_dir, "--role", "slm", "--format", "hf", "--quant", "f32", "--out", out)[0] == 0
    assert not list(out.glob("adapter_*")) and (out / "chat_template.jinja").is_file()
    meta = json.loads((out / "fedcollm_export.json").read_text())
    assert (meta["run"], meta["round"], meta["role"], meta["base"]) == (str(run_dir), 2, "slm", str(base))
    from fedcollm.models.export import sha256

    assert meta["adapter_sha256"] == sha256(adapters["r2"] / "adapter_model.safetensors")
    # loaded by plain transformers in a process where PEFT cannot be imported
    code = ("import sys; sys.modules['peft'] = None; import numpy, torch; "
            "from transformers import AutoModelForCausalLM, AutoTokenizer; "
            f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}, dtype=torch.float32); "
            f"assert AutoTokenizer.from_pretrained({str(out)!r}).chat_template; "
            f"numpy.save({str(tmp_path / 'l.npy')!r}, m(torch.tensor({IDS.tolist()})).logits.detach().numpy())")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    got, want = np.load(tmp_path / "l.npy"), logits(tuned(base, adapters["r2"]))
    plain = logits(load_model(str(base), dtype=torch.float32)[0])
    scale = np.abs(want).max()
    assert np.abs(want - plain).max() > 0.05 * scale  # the adapter changes the model: the check can fail
    assert np.abs(want - logits(tuned(base, adapters["r1"]))).max() > 0.05 * scale  # round 1 differs
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)  # fp32 rounding of the merge


def test_hf_export_bf16_is_the_merge_rounded_once(base, adapters, tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "hf-bf16"
    assert export(capsys, "--adapter", adapters["r2"], "--model", base, "--role", "slm", "--format", "hf",
                  "--out", out)[0] == 0
    saved = load_file(str(out / "model.safetensors"))
    want = merged_state(base, adapters["r2"])
    assert {v.dtype for v in saved.values()} == {torch.bfloat16}
    model, _ = load_model(str(out), dtype=torch.float32)
    for key, value in model.state_dict().items():
        rounded = torch.from_numpy(want[key]).to(torch.bfloat16).float().numpy()
        assert np.array_equal(value.numpy(), rounded), key


def gguf_tensors(path: Path) -> dict[str, tuple[np.ndarray, gguf.GGMLQuantizationType, tuple]]:
    reader = gguf.GGUFReader(path)
    return {t.name: (gguf.quants.dequantize(t.data, t.tensor_type), t.tensor_type, tuple(int(n) for n in t.shape))
            for t in reader.tensors}


def field(path: Path, key: str):
    return gguf.GGUFReader(path).get_field(key).contents()


def hf_to_gguf(config) -> dict[str, str]:
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers)
    return {k: names.get_name(k, try_suffixes=(".weight", ".bias")) for k in merged_keys(config)}


def merged_keys(config) -> list[str]:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return [k for k in AutoModelForCausalLM.from_config(config).state_dict() if k != "lm_head.weight"]


def test_bf16_gguf_holds_the_merged_tensors_and_llama_cpp_metadata(base, adapters, tmp_path, capsys):
    out = tmp_path / "slm.gguf"
    assert export(capsys, "--adapter", adapters["r2"], "--model", base, "--role", "slm", "--format", "gguf",
                  "--out", out)[0] == 0
    model, tok = load_model(str(base), dtype=torch.float32)
    want = merged_state(base, adapters["r2"])
    tensors = gguf_tensors(out)
    names = hf_to_gguf(model.config)
    assert set(tensors) == set(names.values())  # tied embeddings: no output.weight (llama.cpp reuses token_embd)
    for key, name in names.items():
        data, qtype, _ = tensors[name]
        if want[key].ndim == 1:
            assert qtype == gguf.GGMLQuantizationType.F32 and np.array_equal(data, want[key]), name
        else:
            rounded = torch.from_numpy(want[key]).to(torch.bfloat16).float().numpy()
            assert qtype == gguf.GGMLQuantizationType.BF16 and np.array_equal(data, rounded), name
    assert field(out, "general.architecture") == "qwen2" and field(out, "general.type") == "model"
    assert field(out, "general.file_type") == gguf.LlamaFileType.MOSTLY_BF16
    assert field(out, "qwen2.block_count") == model.config.num_hidden_layers
    assert field(out, "qwen2.attention.head_count_kv") == model.config.num_key_value_heads
    assert field(out, "tokenizer.ggml.model") == "gpt2" and field(out, "tokenizer.ggml.pre") == "qwen2"
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    assert field(out, "tokenizer.ggml.tokens") == [t for t, _ in vocab]
    assert field(out, "tokenizer.ggml.token_type")[0] == gguf.TokenType.CONTROL  # <|endoftext|>
    assert field(out, "tokenizer.ggml.merges")[:3] == [" ".join(m) if not isinstance(m, str) else m for m in
                                                       json.loads(tok.backend_tokenizer.to_str())["model"]["merges"][:3]]
    assert field(out, "tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert field(out, "tokenizer.chat_template") == TEMPLATE
    from fedcollm.models.export import sha256

    assert field(out, "fedcollm.export.adapter_sha256") == sha256(adapters["r2"] / "adapter_model.safetensors")
    # transformers' GGUF loader (what `fedcollm eval --model FILE.gguf` uses) gives the bf16 merge's logits
    back, back_tok = load_model(str(out), dtype=torch.float32, cache=tmp_path / "cache")
    assert back_tok("what is the sun")["input_ids"] == tok("what is the sun")["input_ids"]
    hf = tmp_path / "hf"
    assert export(capsys, "--adapter", adapters["r2"], "--model", base, "--role", "slm", "--format", "hf",
                  "--out", hf)[0] == 0
    np.testing.assert_array_equal(logits(back), logits(load_model(str(hf), dtype=torch.float32)[0]))


def test_q8_0_gguf_is_within_its_quantization_error(base, adapters, tmp_path, capsys):
    out = tmp_path / "slm-q8.gguf"
    assert export(capsys, "--adapter", adapters["r2"], "--model", base, "--role", "slm", "--format", "gguf",
                  "--quant", "q8_0", "--out", out)[0] == 0
    model, _ = load_model(str(base), dtype=torch.float32)
    want = merged_state(base, adapters["r2"])
    tensors = gguf_tensors(out)
    assert field(out, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    worst = 0.0
    for key, name in hf_to_gguf(model.config).items():
        data, qtype, _ = tensors[name]
        if want[key].ndim == 1:
            assert qtype == gguf.GGMLQuantizationType.F32 and np.array_equal(data, want[key])
            continue
        assert qtype == gguf.GGMLQuantizationType.Q8_0, name
        blocks, got = want[key].reshape(-1, 32), data.reshape(-1, 32)
        step = np.abs(blocks).max(axis=1, keepdims=True) / 127  # one int8 step per block of 32
        err = np.abs(got - blocks)
        assert np.all(err <= 0.5 * step * (1 + 2 ** -9) + 127 * step * 2 ** -11), name  # rounding + fp16 scale
        worst = max(worst, float(np.max(err / np.where(step > 0, step, 1))))
    assert worst > 0.1  # it is quantized: not a float copy
    back, _ = load_model(str(out), dtype=torch.float32, cache=tmp_path / "cache")
    exact = logits(tuned(base, adapters["r2"]))
    assert np.abs(logits(back) - exact).max() < 0.05 * np.abs(exact).max()


def test_lora_gguf_holds_the_adapter_in_llama_cpp_layout(base, adapters, tmp_path, capsys):
    from safetensors.numpy import load_file

    from fedcollm.models import gguf_io

    out = tmp_path / "slm-lora.gguf"
    assert export(capsys, "--adapter", adapters["r2"], "--model", base, "--role", "slm", "--format", "gguf-lora",
                  "--out", out)[0] == 0
    assert field(out, "general.type") == "adapter" and field(out, "adapter.type") == "lora"
    assert field(out, "general.architecture") == "qwen2" and field(out, "adapter.lora.alpha") == SPEC.alpha
    lora = load_file(str(adapters["r2"] / "adapter_model.safetensors"))
    model, _ = load_model(str(base), dtype=torch.float32)
    names = hf_to_gguf(model.config)
    tensors = gguf_tensors(out)
    assert len(tensors) == len(lora)
    plain = {k: v.numpy() for k, v in model.state_dict().items()}
    want = merged_state(base, adapters["r2"])
    for key, a in lora.items():
        if ".lora_A." not in key:
            continue
        module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        target = names[module + ".weight"]
        (ga, ta, ne_a), (gb, _, ne_b) = tensors[target + ".lora_a"], tensors[target + ".lora_b"]
        out_f, in_f = plain[module + ".weight"].shape
        # llama.cpp's checks: ne(A) = (in, r), ne(B) = (r, out), same ne0 as the base tensor
        assert ne_a == (in_f, SPEC.r) and ne_b == (SPEC.r, out_f) and ta == gguf.GGMLQuantizationType.F32
        assert np.array_equal(ga, a) and np.array_equal(gb, lora[key.replace("lora_A", "lora_B")])
        # llama.cpp adds (alpha / r) · B·A, with r = ne0 of B
        alpha = field(out, "adapter.lora.alpha")
        np.testing.assert_allclose(plain[module + ".weight"] + alpha / ne_b[0] * (gb @ ga), want[module + ".weight"],
                                   rtol=0, atol=1e-5)
    # and read back as a PEFT adapter (`fedcollm generate --export FILE --model BASE`), the same model
    back = gguf_io.load_lora(load_model(str(base), dtype=torch.float32)[0], out)
    np.testing.assert_allclose(logits(back), logits(tuned(base, adapters["r2"])), rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def llama_base(tmp_path_factory, tiny_models) -> Path:
    """A tiny Llama (not written: llama.cpp's Llama layout permutes q/k rows)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("llama") / "llama"
    tok = AutoTokenizer.from_pretrained(tiny_models["slm"])
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("case,needle", [
    ("unfinished-run", "has no finished round"),
    ("unfinished-round", "round 3 of"),
    ("missing-round", "round 7 of"),
    ("other-base-hf", "adapter keys differ"),
    ("other-base-gguf", "adapter keys differ"),
    ("other-base-lora", "adapter keys differ"),
    ("exists-file", "already exists"),
    ("exists-folder", "already exists"),
    ("unknown-format", "unknown export format 'onnx'"),
    ("lora-q8", "--quant q8_0 is not offered for --format gguf-lora"),
    ("hf-q8", "--quant q8_0 is not offered for --format hf"),
    ("not-gguf-name", "named *.gguf"),
    ("run-and-adapter", "not both"),
    ("adapter-no-model", "--adapter needs --model"),
    ("bad-role", "--role must be llm"),
    ("llama-gguf", "GGUF export supports qwen2"),
    ("no-omega", "has no llm adapter"),
    ("f16-overflow-hf", "beyond f16's range"),
    ("f16-overflow-gguf", "beyond f16's range"),
])
def test_refusals_are_one_line_exit_2_and_write_nothing(case, needle, base, adapters, run_dir, llama_base, tmp_path,
                                                        capsys):
    work = tmp_path / "work"
    work.mkdir()
    run = run_dir
    if case in ("unfinished-run", "no-omega"):
        run = tmp_path / "run"
        shutil.copytree(run_dir, run)
        if case == "unfinished-run":
            for done in run.glob("rounds/*/DONE"):
                done.unlink()
        else:
            for omega in run.glob("rounds/*/omega"):
                shutil.rmtree(omega)
    out = work / ("out.gguf" if "gguf" in case or "lora" in case or case == "exists-file" else "out")
    common = ["--role", "slm", "--out", out]
    argv = {
        "unfinished-run": [run, *common, "--format", "hf"],
        "unfinished-round": [run, *common, "--format", "hf", "--round", "3"],
        "missing-round": [run, *common, "--format", "hf", "--round", "7"],
        "other-base-hf": ["--adapter", adapters["llm"], "--model", base, *common, "--format", "hf"],
        "other-base-gguf": ["--adapter", adapters["llm"], "--model", base, *common, "--format", "gguf"],
        "other-base-lora": ["--adapter", adapters["llm"], "--model", base, *common, "--format", "gguf-lora"],
        "exists-file": [run, *common, "--format", "gguf"],
        "exists-folder": [run, *common, "--format", "hf"],
        "unknown-format": [run, *common, "--format", "onnx"],
        "lora-q8": [run, *common, "--format", "gguf-lora", "--quant", "q8_0"],
        "hf-q8": [run, *common, "--format", "hf", "--quant", "q8_0"],
        "not-gguf-name": [run, "--role", "slm", "--out", work / "x.bin", "--format", "gguf"],
        "run-and-adapter": [run, "--adapter", adapters["r1"], "--model", base, *common, "--format", "hf"],
        "adapter-no-model": ["--adapter", adapters["r1"], *common, "--format", "hf"],
        "bad-role": [run, "--role", "client", "--out", out, "--format", "hf"],
        "llama-gguf": ["--adapter", adapters["r1"], "--model", llama_base, *common, "--format", "gguf"],
        "no-omega": [run, "--role", "llm", "--out", out, "--format", "hf"],
        "f16-overflow-hf": ["--adapter", adapters["huge"], "--model", base, *common, "--format", "hf",
                            "--quant", "f16"],
        "f16-overflow-gguf": ["--adapter", adapters["huge"], "--model", base, *common, "--format", "gguf",
                              "--quant", "f16"],
    }[case]
    if case == "exists-file":
        out.write_text("keep me\n")
    if case == "exists-folder":
        out.mkdir()
        (out / "keep.txt").write_text("keep me\n")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, err = export(capsys, *argv)
    assert code == 2 and err.count("\n") == 0 and err.startswith("fedcollm: error:") and needle in err, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    if case == "exists-file":
        assert out.read_text() == "keep me\n"


# ------------------------------------------------------------------------------------------------ real models

REAL_SLM = "qwen2.5-coder-0.5b-instruct"
DEMO_THETA = Path(__file__).resolve().parents[1] / "results/dev-sweep/demo/full-dev/adapters/llm-weight-0/theta"
PROMPTS = ("Write a Python function that returns the square of a number.",
           "What is the boiling point of water at sea level?",
           "Name three primary colors.")


@pytest.fixture(scope="module")
def real_exports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("real-export")
    out = {"hf": root / "slm-hf", "gguf": root / "slm-bf16.gguf", "lora": root / "slm-lora.gguf"}
    for fmt, path in (("hf", out["hf"]), ("gguf", out["gguf"]), ("gguf-lora", out["lora"])):
        assert main(["export", "--adapter", str(DEMO_THETA), "--model", REAL_SLM, "--role", "slm",
                     "--format", fmt, "--out", str(path)]) == 0
    return out


@pytest.mark.slow
def test_real_gguf_tokenizer_matches_the_original_file(real_exports):
    """The tokenizer metadata written from the HF tokenizer equals what llama.cpp's converter wrote."""
    from fedcollm.models import offline

    original = offline.cache_dir() / "gguf" / f"{REAL_SLM}.gguf"
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                "tokenizer.ggml.pre", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.padding_token_id", "tokenizer.chat_template", "qwen2.rope.freq_base"):
        assert field(real_exports["gguf"], key) == field(original, key), key


@pytest.mark.slow
def test_real_exports_answer_arc_easy_dev_as_the_adapter_does(real_exports, tmp_path, monkeypatch):
    """The first 200 ARC-Easy dev questions, scored in fp32 arithmetic (as llama.cpp computes on a CPU): the bf16
    HF and GGUF exports pick the adapter's answer on >= 198 (measured: 199; results/export/)."""
    data = os.environ.get("FEDCOLLM_DATA_DIR")
    if not data:
        pytest.skip("needs FEDCOLLM_DATA_DIR")
    monkeypatch.setenv("FEDCOLLM_SEAL_TEST", "1")  # dev only: any read of a test question fails
    preds = {}
    gguf_cache = ["--cache", str(tmp_path / "cache")]  # the GGUF's dequantized copy goes there, not ~/.cache
    for name, argv in (("adapter", ["--model", REAL_SLM, "--adapter", str(DEMO_THETA)]),
                       ("hf", ["--model", str(real_exports["hf"])]),
                       ("gguf", ["--model", str(real_exports["gguf"]), *gguf_cache])):
        assert main(["eval", *argv, "--tasks", "arc_easy", "--limit", "200", "--split", "dev", "--precision", "fp32",
                     "--data-dir", data, "--predictions", str(tmp_path / name),
                     "--out", str(tmp_path / f"{name}.json")]) == 0
        lines = (tmp_path / name / "predictions_arc_easy.jsonl").read_text().splitlines()
        preds[name] = {r["id"]: r["pred"] for r in map(json.loads, lines)}
    assert len(preds["adapter"]) == 200
    for name in ("hf", "gguf"):
        assert sum(preds[name][q] == p for q, p in preds["adapter"].items()) >= 198, name


@pytest.mark.slow
def test_llama_cpp_reproduces_the_adapters_greedy_replies(real_exports):
    """llama.cpp on the merged bf16 GGUF continues three prompts as transformers does with base + adapter."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from fedcollm.generate import generate, prompt_ids

    model, tok = load_model(REAL_SLM, dtype=torch.float32)
    plain = [generate(model, tok, p, max_new_tokens=24, stream=False) for p in PROMPTS]
    model = load_adapter_model(model, DEMO_THETA)
    assert plain != [generate(model, tok, p, max_new_tokens=24, stream=False) for p in PROMPTS]  # θ shows
    llm = llama_cpp.Llama(model_path=str(real_exports["gguf"]), n_ctx=512, n_threads=2, logits_all=True,
                          verbose=False)
    for prompt in PROMPTS:
        ids = prompt_ids(tok, prompt)
        text = tok.decode(ids)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids  # the GGUF's tokenizer is HF's
        llm.reset()
        llm.eval(ids)
        with torch.no_grad():
            want_logits = model(torch.tensor([ids])).logits[0, -1].numpy()
            with model.disable_adapter():
                moved = np.abs(want_logits - model(torch.tensor([ids])).logits[0, -1].numpy()).max()
        # measured: 0.05 from llama.cpp's bf16 file, while θ moves these logits by 3.3-5.4
        assert np.abs(np.asarray(llm.scores[len(ids) - 1]) - want_logits).max() < min(0.2, moved / 10)
        want = generate(model, tok, prompt, max_new_tokens=24, stream=False)
        got = llm.create_completion(ids, max_tokens=24, temperature=0.0, repeat_penalty=1.0, top_k=1)
        assert got["choices"][0]["text"].strip() == want.strip(), prompt

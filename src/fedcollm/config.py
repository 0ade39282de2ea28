"""The one config system: typed dataclasses, a YAML file, and ``section.key=value`` overrides.

Unknown keys and values of the wrong type are refused with one line that names the key, where it came
from and, for typos, the closest valid key. Every run writes its resolved config next to its results.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .models.lora import LoraSpec


class ConfigError(ValueError):
    """A bad config file, key or value."""


@dataclass
class ModelSection:
    name: str
    lora: LoraSpec = field(default_factory=LoraSpec)
    lr: float = 2e-4
    batch_size: int = 4


@dataclass
class FederationSection:
    num_clients: int = 4
    rounds: int = 2
    local_epochs: int = 1
    local_max_steps: int | None = None  # cap per client per round (CPU budgets); None = full epochs
    partition: str = "iid"  # iid | dirichlet
    alpha: float = 0.5  # Dirichlet concentration (non-IID when small)
    aux_fraction: float = 0.2  # share of each task's train split kept by the server as D^a
    aux_size: int | None = None  # or an absolute number of D^a questions per task
    client_size: int | None = None  # cap on each client's D^k
    engine: str = "simulation"  # simulation | deployment
    min_clients: int | None = None  # rounds go on with at least this many updates (default: all)
    connect_timeout: float = 600.0  # seconds to wait for all clients before a round starts with min_clients
    round_timeout: float = 24 * 3600.0  # seconds to wait for client replies; a silent client counts as dropped
    # Gate on each update's distance from the broadcast θ: an absolute cap (None = off) and a robust one,
    # "more than this many times the round's median" (needs >= 3 updates; None = off).
    max_update_norm: float | None = None
    # float32, or bfloat16 (half the bytes each way, plain aggregation only: SecAgg+ has its own encoding)
    transfer_dtype: str = "float32"
    update_outlier_factor: float | None = 10.0
    # Simulation: client worker processes. One (the default) runs the clients in turn and shares one
    # frozen SLM base between them (only adapters are swapped); K gives each client its own process
    # (K copies of the base), so a crashed client takes only itself down, as in a deployment.
    sim_workers: int = 1


@dataclass
class KDSection:
    weight: float = 1.0  # λ: weight of the KL term in both directions (0 = plain SFT on D^a)
    temperature: float = 1.0  # τ
    top_k: int | None = 128  # teacher logits kept for the KL (None = full vocabulary)
    epochs: int = 1  # passes over D^a per round (R = epochs * |D^a| / batch)
    max_steps: int | None = None  # or a cap on R


@dataclass
class SecAggSection:
    """Flower's SecAgg+ for step 3: the server learns only the weighted sum of the client adapters."""

    enabled: bool | None = None  # None: on in deployment, off in simulation
    num_shares: float = 1.0  # fraction of the round's clients each client shares its keys with (1.0 = all)
    reconstruction_threshold: float = 0.75  # fraction of num_shares needed to unmask (min 2): dropouts tolerated
    clipping_range: float = 8.0  # |n_k / max_weight · θ_k| is clipped here before quantization
    quantization_range: int = 4194304  # 2^22 levels over [-clipping_range, clipping_range]
    max_weight: float | None = None  # client weight = num_examples / max_weight; None: largest possible D^k (DP: 1)
    timeout: float | None = 3600.0  # seconds per protocol stage before a silent client counts as dropped


@dataclass
class DPSection:
    """Central DP with client-side fixed clipping (Flower's wrapper and mod): clip each Δθ_k, noise the mean.

    Under DP the mean is unweighted (every client counts once, whatever its n_k): the noise and ε assume
    that one client moves the mean by at most C/m.
    """

    enabled: bool = False
    clipping_norm: float = 1.0  # C: bound on ||θ_k − θ^t||
    noise_multiplier: float = 1.0  # z: noise std on the mean is z·C/m, m = updates averaged
    delta: float = 1e-5  # δ of the (ε, δ) reported per round


@dataclass
class EvalSection:
    tasks: list[str] | None = None  # default: the training tasks
    limit: int | None = None  # first N test questions per task (None = all)
    batch_size: int = 8
    every_round: bool = True
    zero_shot: bool = True  # score the base models before round 1 (the experiment does it once, not per method)


@dataclass
class Config:
    # fedcollm: Algorithm 1; fedavg: the same federation without the server's LLM and KD (a baseline)
    method: str = "fedcollm"
    tasks: list[str] = field(default_factory=lambda: ["arc_easy"])
    data_dir: str | None = None  # None: $FEDCOLLM_DATA_DIR, else the HF hub
    output_dir: str = "runs"
    run_name: str | None = None
    seed: int = 0
    precision: str = "auto"  # auto (bf16 where the hardware has fast bf16, else fp32) | bf16 | fp32
    device: str = "auto"  # auto (cuda when available, else cpu) | cpu | cuda | cuda:N
    max_length: int = 256
    grad_clip: float = 1.0
    llm: ModelSection = field(default_factory=lambda: ModelSection("qwen2.5-coder-1.5b-instruct"))
    slm: ModelSection = field(default_factory=lambda: ModelSection("qwen2.5-coder-0.5b-instruct"))
    federation: FederationSection = field(default_factory=FederationSection)
    secagg: SecAggSection = field(default_factory=SecAggSection)
    dp: DPSection = field(default_factory=DPSection)
    kd: KDSection = field(default_factory=KDSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def eval_tasks(self) -> list[str]:
        return list(self.eval.tasks or self.tasks)

    def secure_aggregation(self) -> bool:
        """SecAgg+ as configured, or by engine: on in deployment (real network), off in simulation."""
        if self.secagg.enabled is None:
            return self.federation.engine == "deployment"
        return self.secagg.enabled


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (ints widen to floats); raise ConfigError otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {key} = {value!r} is not a {_name(tp)}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key} = {value!r} is not a list")
        return [_coerce(v, item, key, where) for v in value]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, str, float, bool) and (type(value) is tp):
        return value
    raise ConfigError(f"{where}: {key} = {value!r} is not a {_name(tp)}")


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _build(cls, data: dict, where: str, prefix: str, obj):
    """Set ``data``'s keys on the dataclass instance ``obj`` (recursing into sections), checking each."""
    hints = typing.get_type_hints(cls)
    known = _fields(cls)
    for key, value in data.items():
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (valid: {', '.join(known)})"
            raise ConfigError(f"{where}: unknown config key {prefix}{key}{hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            _build(type(current), value, where, f"{prefix}{key}.", current)
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{prefix}{key}", where))
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file, then each ``a.b=value`` override, each checked on the way in."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        cfg = config_from_text(p.read_text(), str(p))
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        _build(Config, nested, "command line", "", cfg)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    from .data import ALL_TASKS

    for t in cfg.tasks + (cfg.eval.tasks or []):
        if t not in ALL_TASKS:
            raise ConfigError(f"unknown task {t!r} in tasks; choose from {', '.join(ALL_TASKS)}")
    checks = [
        (cfg.method in ("fedcollm", "fedavg"), f"method must be fedcollm or fedavg, got {cfg.method!r}"),
        (cfg.precision in ("auto", "bf16", "fp32"), f"precision must be auto, bf16 or fp32, got {cfg.precision!r}"),
        (cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
         f"device must be auto, cpu or cuda[:N], got {cfg.device!r}"),
        (cfg.federation.partition in ("iid", "dirichlet"), "federation.partition must be iid or dirichlet"),
        (cfg.federation.engine in ("simulation", "deployment"), "federation.engine must be simulation or deployment"),
        (cfg.federation.num_clients >= 1, "federation.num_clients must be >= 1"),
        (cfg.federation.rounds >= 1, "federation.rounds must be >= 1"),
        (cfg.federation.sim_workers >= 1, "federation.sim_workers must be >= 1"),
        (cfg.federation.local_epochs >= 1 and cfg.kd.epochs >= 1, "federation.local_epochs and kd.epochs must be >= 1"),
        (all(x is None or x >= 1 for x in (cfg.federation.local_max_steps, cfg.kd.max_steps)),
         "federation.local_max_steps and kd.max_steps must be >= 1 or null"),
        (cfg.federation.alpha > 0, "federation.alpha (Dirichlet concentration) must be > 0"),
        (cfg.federation.aux_size is None or cfg.federation.aux_size >= 0, "federation.aux_size must be >= 0 or null"),
        (all(m.lr > 0 and m.batch_size >= 1 for m in (cfg.llm, cfg.slm)),
         "llm/slm lr must be > 0 and batch_size >= 1"),
        (cfg.eval.limit is None or cfg.eval.limit >= 1, "eval.limit must be >= 1 or null (all questions)"),
        (cfg.eval.batch_size >= 1, "eval.batch_size must be >= 1"),
        (cfg.federation.transfer_dtype in ("float32", "bfloat16"),
         "federation.transfer_dtype must be float32 or bfloat16"),
        (cfg.federation.min_clients is None or 1 <= cfg.federation.min_clients <= cfg.federation.num_clients,
         "federation.min_clients must be between 1 and federation.num_clients"),
        (cfg.federation.client_size is None or cfg.federation.client_size >= 1,
         "federation.client_size must be >= 1 (a client with no data has nothing to train on)"),
        (cfg.federation.update_outlier_factor is None or cfg.federation.update_outlier_factor > 1,
         "federation.update_outlier_factor must be > 1 or null"),
        (0 < cfg.secagg.num_shares <= 1, "secagg.num_shares must be a fraction in (0, 1]"),
        (0 < cfg.secagg.reconstruction_threshold <= 1, "secagg.reconstruction_threshold must be a fraction in (0, 1]"),
        (cfg.secagg.clipping_range > 0 and cfg.secagg.quantization_range > 0,
         "secagg.clipping_range and secagg.quantization_range must be > 0"),
        (cfg.secagg.max_weight is None or cfg.secagg.max_weight > 0, "secagg.max_weight must be > 0"),
        (cfg.dp.clipping_norm > 0 and cfg.dp.noise_multiplier >= 0 and 0 < cfg.dp.delta < 1,
         "dp.clipping_norm must be > 0, dp.noise_multiplier >= 0 and 0 < dp.delta < 1"),
        (not cfg.dp.enabled or cfg.federation.transfer_dtype == "float32",
         "dp.enabled needs federation.transfer_dtype=float32: rounding clipped updates to bf16 can push them "
         "past dp.clipping_norm"),
        (cfg.kd.temperature > 0, "kd.temperature must be > 0"),
        (cfg.kd.weight >= 0, "kd.weight (λ) must be >= 0"),
        (cfg.kd.top_k is None or cfg.kd.top_k >= 1, "kd.top_k must be >= 1 or null"),
        (cfg.max_length >= 8, "max_length must be >= 8"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def config_differences(a: Config, b: Config) -> list[str]:
    """The dotted keys whose values differ between two configs (``federation.rounds``, ...)."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    fa, fb = flat(to_dict(a)), flat(to_dict(b))
    return [k for k in fa if fa[k] != fb.get(k)]


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(dump_config(cfg))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_from_text(text: str, where: str = "config text") -> Config:
    """A config from YAML text (what the server sends clients in each train message)."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: top level must be a mapping")
    cfg = _build(Config, data, where, "", Config())
    validate(cfg)
    return cfg

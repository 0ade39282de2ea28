"""The one config system: typed dataclasses, a YAML file, and ``section.key=value`` overrides.

Unknown keys, values of the wrong type and values outside a field's range are refused with one line
that names the key, where it came from and, for typos, the closest valid key; enum-like fields are
``Literal`` types, so the loader itself names the allowed values. Each section checks its own fields
(``check``); the checks that span sections are in ``validate``. Every run writes its resolved config
next to its results.

This module imports neither torch nor PEFT: clients, the CLI and tests parse configs without them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib.resources
import logging
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

log = logging.getLogger(__name__)

#: What ``str.splitlines`` splits on, each written as its escape: a user error is one line on stderr even when
#: the path or value it names holds a newline (or U+2028, ...).
_LINE_BREAKS = str.maketrans({c: repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


def one_line(text: str) -> str:
    return text.translate(_LINE_BREAKS)


class ConfigError(ValueError):
    """A bad config file, key or value; its message is always one line (``one_line``)."""

    def __str__(self) -> str:
        return one_line(super().__str__())


class _NotFinite(ConfigError):
    """A number that is inf or NaN: more telling than "not a float | None" when a union is tried."""


Method = Literal["fedcollm", "fedavg"]
Precision = Literal["auto", "bf16", "fp32"]  # the same as precision.PRECISIONS (that module imports torch)
Partition = Literal["iid", "dirichlet"]
Engine = Literal["simulation", "deployment"]
TransferDtype = Literal["float32", "bfloat16"]
KDMix = Literal["add", "convex"]
EvalSplit = Literal["dev", "test"]
KDSelect = Literal["none", "greater", "gated"]
KDTarget = Literal["tokens", "choices"]
Objective = Literal["tokens", "choices"]
Tracker = Literal["tensorboard", "mlflow"]
Strategy = Literal["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad"]
DEVICE = re.compile(r"auto|cpu|cuda(:(0|[1-9][0-9]*))?")  # the indexes torch.device takes: ASCII, no leading 0


def require(ok: bool, message: str) -> None:
    """One config check: ``message`` as a ConfigError unless ``ok`` (every check reads as a sentence)."""
    if not ok:
        raise ConfigError(message)


@dataclass
class LoraSpec:
    """LoRA hyper-parameters for one model (the paper's defaults are PEFT's q/v projections).

    Defined here, not in ``models.lora``, so that parsing a config needs neither torch nor PEFT.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def check(self, prefix: str = "lora.") -> None:
        """A rank of 0 or an empty target list would build an adapter with nothing to train."""
        require(self.r >= 1, f"{prefix}r must be >= 1")
        require(self.alpha > 0, f"{prefix}alpha must be > 0")
        require(0 <= self.dropout < 1, f"{prefix}dropout must be in [0, 1)")
        require(bool(self.targets) and all(t.strip() for t in self.targets),
                f"{prefix}targets must name at least one module (e.g. q_proj,v_proj)")


@dataclass
class ModelSection:
    name: str
    lora: LoraSpec = field(default_factory=LoraSpec)
    lr: float = 2e-4
    batch_size: int = 4

    def check(self, prefix: str) -> None:
        """A learning rate <= 0 trains uphill or not at all; a batch of 0 never steps."""
        require(bool(self.name.strip()), f"{prefix}name must name a model")
        require(self.lr > 0, f"{prefix}lr must be > 0")
        require(self.batch_size >= 1, f"{prefix}batch_size must be >= 1")
        self.lora.check(f"{prefix}lora.")


@dataclass
class FederationSection:
    num_clients: int = 4
    rounds: int = 2
    local_epochs: int = 1
    local_max_steps: int | None = None  # cap per client per round (CPU budgets); None = full epochs
    partition: Partition = "iid"
    alpha: float = 0.5  # Dirichlet concentration (non-IID when small)
    aux_fraction: float = 0.2  # share of each task's train split kept by the server as D^a
    aux_size: int | None = None  # or an absolute number of D^a questions per task
    # Subsample each task's training split uniformly to this many questions before D^a and the D^k are cut
    # (None = all): keeps aux_fraction's D^a : D^k proportion at a CPU-sized scale (the cpu-paper preset)
    train_size: int | None = None
    client_size: int | None = None  # cap on each client's D^k
    min_clients: int | None = None  # rounds go on with at least this many updates (default: all)
    connect_timeout: float = 600.0  # seconds to wait for all clients before a round starts with min_clients
    round_timeout: float = 24 * 3600.0  # seconds to wait for client replies; a silent client counts as dropped
    # Gate on each update's distance from the broadcast θ: an absolute cap (None = off) and a robust one,
    # "more than this many times the round's median" (needs >= 3 updates; None = off).
    max_update_norm: float | None = None
    # float32, or bfloat16 (half the bytes each way, plain aggregation only: SecAgg+ has its own encoding)
    transfer_dtype: TransferDtype = "float32"
    update_outlier_factor: float | None = 10.0
    # Simulation: client worker processes. One (the default) runs the clients in turn and shares one
    # frozen SLM base between them (only adapters are swapped); K gives each client its own process
    # (K copies of the base), so a crashed client takes only itself down, as in a deployment.
    sim_workers: int = 1
    # Step 3's server optimizer on the aggregated mean (federation/server_opt.py: our own lines, stepping as Flower's
    # strategy classes of the same names do, checked against them in the tests): fedavg takes
    # the mean as θ^{t,0}; fedavgm (Hsu et al. 2019) and fedadam/fedyogi/fedadagrad (Reddi et al. 2021) step θ^t
    # along mean − θ^t. A null hyper-parameter keeps Flower's default for the chosen strategy.
    strategy: Strategy = "fedavg"
    server_lr: float | None = None  # η of fedadam/fedyogi/fedadagrad (Flower: 0.1); fedavgm's server lr (1.0)
    server_momentum: float | None = None  # fedavgm's momentum (Flower: 0.0)
    beta_1: float | None = None  # fedadam/fedyogi first-moment decay (Flower: 0.9)
    beta_2: float | None = None  # fedadam/fedyogi second-moment decay (Flower: 0.99)
    tau: float | None = None  # fedadam/fedyogi/fedadagrad adaptivity, added to √v (the second moment) (Flower: 1e-3)
    proximal_mu: float = 0.0  # FedProx (Li et al. 2020): μ/2·‖θ − θ^t‖² on each client's loss; 0 = off
    # Cross-device rounds: train only this many of the num_clients registered (an int), or this fraction of
    # them (a float in (0, 1]), drawn each round by Flower's sampler, seeded by (seed, round); null: all
    clients_per_round: int | float | None = None
    # A folder where each client memoizes its local updates by their inputs (federation/update_cache.py): runs
    # that differ only in the server step (a sweep of KD transfers) compute their identical round-1 updates once
    update_cache: str | None = None

    def per_round(self) -> int:
        """How many clients a round trains: ``clients_per_round`` as a count, or a fraction of ``num_clients``."""
        n = self.clients_per_round
        if n is None:
            return self.num_clients
        return max(1, round(n * self.num_clients)) if isinstance(n, float) else n

    def check(self, prefix: str = "federation.") -> None:
        """Counts, fractions, timeouts and norm gates; a timeout or norm cap <= 0 would drop every client."""
        p = prefix
        require(self.num_clients >= 1, f"{p}num_clients must be >= 1")
        require(self.rounds >= 1, f"{p}rounds must be >= 1")
        require(self.local_epochs >= 1, f"{p}local_epochs must be >= 1")
        require(self.local_max_steps is None or self.local_max_steps >= 1, f"{p}local_max_steps must be >= 1 or null")
        require(self.alpha > 0, f"{p}alpha (Dirichlet concentration) must be > 0")
        require(0 <= self.aux_fraction < 1, f"{p}aux_fraction must be in [0, 1)")
        require(self.aux_size is None or self.aux_size >= 0, f"{p}aux_size must be >= 0 or null")
        require(self.train_size is None or self.train_size >= 1,
                f"{p}train_size must be >= 1 or null (every training question)")
        require(self.client_size is None or self.client_size >= 1,
                f"{p}client_size must be >= 1 (a client with no data has nothing to train on)")
        n = self.clients_per_round
        require(n is None or (1 <= n <= self.num_clients if isinstance(n, int) else 0 < n <= 1),
                f"{p}clients_per_round must be a count in [1, {p}num_clients] or a fraction in (0, 1], got {n}")
        require(self.min_clients is None or 1 <= self.min_clients <= self.per_round(),
                f"{p}min_clients must be between 1 and the clients trained per round ({self.per_round()})")
        require(self.update_cache is None or bool(self.update_cache.strip()),
                f"{p}update_cache must name a folder or be null (off)")
        require(self.connect_timeout > 0, f"{p}connect_timeout must be > 0 seconds")
        require(self.round_timeout > 0, f"{p}round_timeout must be > 0 seconds")
        require(self.max_update_norm is None or self.max_update_norm > 0,
                f"{p}max_update_norm must be > 0 or null (off): a cap <= 0 rejects every update")
        require(self.update_outlier_factor is None or self.update_outlier_factor > 1,
                f"{p}update_outlier_factor must be > 1 or null (off)")
        require(1 <= self.sim_workers <= self.num_clients,
                f"{p}sim_workers must be between 1 and {p}num_clients ({self.num_clients})")
        require(self.server_lr is None or self.server_lr > 0, f"{p}server_lr must be > 0 or null (Flower's default)")
        for name in ("server_momentum", "beta_1", "beta_2"):
            value = getattr(self, name)
            require(value is None or 0 <= value < 1, f"{p}{name} must be in [0, 1) or null (Flower's default)")
        require(self.tau is None or self.tau > 0, f"{p}tau must be > 0 or null (Flower's default)")
        require(self.proximal_mu >= 0, f"{p}proximal_mu must be >= 0 (0 = FedAvg's plain client loss)")
        moments = self.strategy in ("fedadam", "fedyogi")  # fedadagrad has neither β (Flower's signature)
        stray = [n for n, used in (("server_momentum", self.strategy == "fedavgm"), ("beta_1", moments),
                                   ("beta_2", moments), ("tau", moments or self.strategy == "fedadagrad"),
                                   ("server_lr", self.strategy != "fedavg"))
                 if getattr(self, n) is not None and not used]
        require(not stray, f"{p}{stray[0] if stray else ''} has no effect with {p}strategy={self.strategy}")


@dataclass
class KDSection:
    """Step 4, the server's mutual distillation on D^a (README, "KD losses", says where each knob comes from)."""

    weight: float = 1.0  # λ: weight of the KL term in both directions (0 = plain SFT on D^a)
    llm_weight: float | None = None  # LLM ← SLM only (the KL toward the SLM in the LLM's loss); null: weight
    slm_weight: float | None = None  # SLM ← LLM only; null: weight
    mix: KDMix = "add"  # add: CE + w·KL (the paper); convex: (1 − w)·CE + w·KL (FedMKT, w = 0.1)
    select: KDSelect = "none"  # none: distil every sequence (the paper); greater: FedMKT's selective KD;
    # gated: the LLM distils toward the SLM only where the SLM is closer to the gold answer and the LLM is unsure
    # tokens: each model's KL toward the other's next-token distribution on the gold answer's tokens (the paper);
    # choices: toward the other's distribution over the question's answer choices, scored as the evaluator
    # scores them, with CE on the gold choice (rank classification); README, "KD losses"
    target: KDTarget = "tokens"
    token_ce: bool = False  # choices: also each model's CE on the gold choice's tokens (the tokens target's CE)
    confidence: float = 0.5  # gated: the LLM's gold-answer probability (per token) at which it counts as sure
    temperature: float = 1.0  # τ
    top_k: int | None = 128  # teacher logits kept for the KL (None = full vocabulary)
    epochs: int = 1  # passes over D^a per round (R = epochs * |D^a| / batch)
    max_steps: int | None = None  # or a cap on R
    batch_size: int | None = None  # D^a examples per KD step, one batch for both models; null: slm.batch_size
    llm_lr: float | None = None  # the LLM's learning rate in KD; null: llm.lr
    slm_lr: float | None = None  # the SLM's learning rate in KD; null: slm.lr

    def weights(self) -> tuple[float, float]:
        """(LLM ← SLM, SLM ← LLM): each direction's own weight, else the shared λ."""
        return (self.weight if self.llm_weight is None else self.llm_weight,
                self.weight if self.slm_weight is None else self.slm_weight)

    def check(self, prefix: str = "kd.") -> None:
        """A negative λ would push the models apart; τ <= 0 makes the softmax undefined; a convex mix
        needs weights in [0, 1] (above 1 the CE term would be subtracted)."""
        require(self.weight >= 0, f"{prefix}weight (λ) must be >= 0")
        for name in ("llm_weight", "slm_weight"):
            value = getattr(self, name)
            require(value is None or value >= 0, f"{prefix}{name} must be >= 0 or null (kd.weight)")
        if self.mix == "convex":
            require(all(0 <= w <= 1 for w in self.weights()),
                    f"{prefix}mix=convex needs weights in [0, 1]: (1 − w)·CE + w·KL")
        require(self.batch_size is None or self.batch_size >= 1, f"{prefix}batch_size must be >= 1 or null")
        for name in ("llm_lr", "slm_lr"):
            value = getattr(self, name)
            require(value is None or value > 0, f"{prefix}{name} must be > 0 or null")
        require(self.temperature > 0, f"{prefix}temperature must be > 0")
        require(0 < self.confidence <= 1, f"{prefix}confidence must be a probability in (0, 1]")
        require(self.top_k is None or self.top_k >= 1, f"{prefix}top_k must be >= 1 or null")
        require(self.epochs >= 1, f"{prefix}epochs must be >= 1")
        require(self.max_steps is None or self.max_steps >= 1, f"{prefix}max_steps must be >= 1 or null")
        require(self.target == "choices" or not self.token_ce,
                f"{prefix}token_ce needs {prefix}target=choices (the tokens target's CE is that CE already)")


@dataclass
class TrainSection:
    """What a model trains on in a local step (clients, Standalone, Centralized): every method gets the same."""

    # tokens: CE on the gold answer's tokens (the paper's ℓ_TA); choices: CE over the question's answer choices,
    # each scored as the evaluator scores it (rank classification, T-Few's Liu et al. 2022)
    objective: Objective = "tokens"

    def check(self, prefix: str = "train.") -> None:
        """Only the Literal's values; nothing else to check."""


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

    def check(self, prefix: str = "secagg.") -> None:
        """Fractions in (0, 1], positive ranges, and a stage timeout > 0 (0 would drop every client)."""
        require(0 < self.num_shares <= 1, f"{prefix}num_shares must be a fraction in (0, 1]")
        require(0 < self.reconstruction_threshold <= 1,
                f"{prefix}reconstruction_threshold must be a fraction in (0, 1]")
        require(self.clipping_range > 0 and self.quantization_range > 0,
                f"{prefix}clipping_range and {prefix}quantization_range must be > 0")
        require(self.max_weight is None or self.max_weight > 0, f"{prefix}max_weight must be > 0 or null")
        require(self.timeout is None or self.timeout > 0, f"{prefix}timeout must be > 0 seconds or null")


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

    def check(self, prefix: str = "dp.") -> None:
        """C <= 0 would clip every update to nothing; δ outside (0, 1) makes (ε, δ) meaningless."""
        require(self.clipping_norm > 0, f"{prefix}clipping_norm must be > 0")
        require(self.noise_multiplier >= 0, f"{prefix}noise_multiplier must be >= 0")
        require(0 < self.delta < 1, f"{prefix}delta must be in (0, 1)")


@dataclass
class EvalSection:
    tasks: list[str] | None = None  # default: the training tasks
    split: EvalSplit = "test"  # dev: what choices are made on; test: lm-eval's split, for the report
    limit: int | None = None  # first N questions per task (None = all)
    # On the dev split (every round, and what choices are read off) a smaller first-N per task; null: limit
    dev_limit: int | None = None
    batch_size: int = 8
    every_round: bool = True
    zero_shot: bool = True  # score the base models before round 1 (the experiment does it once, not per method)

    def split_limit(self) -> int | None:
        """Questions per task on the split being evaluated: ``dev_limit`` on dev when set, else ``limit``."""
        return self.dev_limit if self.split == "dev" and self.dev_limit is not None else self.limit

    def check(self, prefix: str = "eval.") -> None:
        """A limit of 0 would silently mean "all questions" further down; refuse it here."""
        require(self.limit is None or self.limit >= 1, f"{prefix}limit must be >= 1 or null (all questions)")
        require(self.dev_limit is None or self.dev_limit >= 1,
                f"{prefix}dev_limit must be >= 1 or null ({prefix}limit)")
        require(self.batch_size >= 1, f"{prefix}batch_size must be >= 1")
        if self.tasks is not None:
            _check_tasks(self.tasks, f"{prefix}tasks")


@dataclass
class DataSection:
    """Who holds what: where the server's D^a comes from, and the clients' own files.

    By default D^a is a slice of each of ``tasks``' training splits and the rest is dealt to the clients. With
    ``aux_tasks`` the server's D^a is cut from those tasks instead: one that is also in ``tasks`` is cut as by
    default (D^a and the clients' pool disjoint), one only in ``aux_tasks`` is the server's alone, and a task only in
    ``tasks`` goes to the clients whole. D^a questions of an ``aux_unlabeled`` task keep no answer: the server has
    its users' questions but no labels, so they get the KD terms only, never a CE. With ``client_files`` (one path
    per client) client k trains on its file alone, as a deployed SuperNode does with ``data-file``; no other
    process reads it."""

    aux_tasks: list[str] | None = None  # the tasks D^a is cut from (null: tasks)
    aux_unlabeled: list[str] = field(default_factory=list)  # tasks whose D^a questions have no answers
    client_files: list[str] | None = None  # client k's D^k is the k-th file (build.own_file: its layouts)

    def check(self, prefix: str = "data.") -> None:
        if self.aux_tasks is not None:
            _check_tasks(self.aux_tasks, f"{prefix}aux_tasks")
        require(all(n.strip() for n in self.aux_unlabeled), f"{prefix}aux_unlabeled holds a blank task name")
        if self.client_files is not None:
            require(bool(self.client_files), f"{prefix}client_files is empty: one file per client, or null")
            require(all(f.strip() for f in self.client_files), f"{prefix}client_files holds a blank path")


@dataclass
class MlflowSection:
    """Where ``tracking: [mlflow]`` logs (tracking.py): a local store, no server needed."""

    uri: str | None = None  # null: sqlite:///OUTPUT_DIR/mlflow.db (MLflow 3's recommended local store)
    experiment: str = "fedcollm"  # MLflow experiment name
    parent_run: str | None = None  # an MLflow run id to nest this run under (set by `fedcollm experiment`)

    def check(self, prefix: str = "mlflow.") -> None:
        require(bool(self.experiment.strip()), f"{prefix}experiment must name an MLflow experiment")
        require(self.uri is None or bool(self.uri.strip()), f"{prefix}uri must be a tracking URI or null")


@dataclass
class Config:
    # fedcollm: Algorithm 1; fedavg: the same federation without the server's LLM and KD (a baseline)
    method: Method = "fedcollm"
    tasks: list[str] = field(default_factory=lambda: ["arc_easy"])
    data_dir: str | None = None  # None: $FEDCOLLM_DATA_DIR, else the HF hub
    output_dir: str = "runs"
    run_name: str | None = None  # a folder name inside output_dir (no path separators, not . or ..)
    seed: int = 0  # LoRA init, batch order, dropout, client sampling, DP noise; and the data split unless split_seed
    # The seed of the D^a / D^k cut (null: seed): fixed while seed varies, runs differ only in their training's
    # randomness, on the same questions (several seeds of one experiment)
    split_seed: int | None = None
    precision: Precision = "auto"  # auto: bf16 where the hardware has fast bf16, else fp32
    device: str = "auto"  # auto (cuda when available, else cpu) | cpu | cuda | cuda:N
    max_length: int = 256
    grad_clip: float = 1.0  # max gradient norm per optimizer step; 0 = no clipping
    # Training batches with their sequences packed in one row instead of padded (train.py): the same examples
    # and loss, up to rounding, a third fewer tokens on mixed-task batches; off keeps earlier runs' numbers
    packing: bool = False
    llm: ModelSection = field(default_factory=lambda: ModelSection("qwen2.5-coder-1.5b-instruct"))
    slm: ModelSection = field(default_factory=lambda: ModelSection("qwen2.5-coder-0.5b-instruct"))
    federation: FederationSection = field(default_factory=FederationSection)
    train: TrainSection = field(default_factory=TrainSection)
    secagg: SecAggSection = field(default_factory=SecAggSection)
    dp: DPSection = field(default_factory=DPSection)
    kd: KDSection = field(default_factory=KDSection)
    eval: EvalSection = field(default_factory=EvalSection)
    data: DataSection = field(default_factory=DataSection)
    # where each round's figures go besides metrics.jsonl: TensorBoard event files in the run folder and/or
    # an MLflow store on local disk (tracking.py); [] for neither
    tracking: list[Tracker] = field(default_factory=lambda: ["tensorboard"])
    mlflow: MlflowSection = field(default_factory=MlflowSection)

    def eval_tasks(self) -> list[str]:
        return list(self.eval.tasks or self.tasks)

    def secure_aggregation(self, engine: Engine) -> bool:
        """SecAgg+ as configured, or by the engine that drives the run (the command decides it, not the config):
        on in deployment (a real network), off in simulation."""
        if self.secagg.enabled is None:
            return engine == "deployment"
        return self.secagg.enabled

    def check(self) -> None:
        """The top-level fields; each section checks its own (``validate`` runs them all)."""
        _check_tasks(self.tasks, "tasks")
        require(bool(self.output_dir.strip()), "output_dir must name a folder")
        if self.run_name is not None:
            check_run_name(self.run_name)
        require(DEVICE.fullmatch(self.device) is not None,
                f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        require(self.seed >= 0, "seed must be >= 0 (numpy's generators take no negative seed)")
        require(self.split_seed is None or self.split_seed >= 0, "split_seed must be >= 0 or null (seed)")
        require(self.max_length >= 8, "max_length must be >= 8")
        require(self.grad_clip >= 0, "grad_clip must be >= 0 (0 = no clipping; a negative norm trains uphill)")


def _check_tasks(names: list[str], key: str) -> None:
    """A task list's form: at least one name, none blank. Whether each name is a task is the data layer's to say
    (``data.check_tasks``, in ``build.preflight``): this module knows no data, and a name may be a file."""
    require(bool(names), f"{key} is empty: name at least one task")
    require(all(n.strip() for n in names), f"{key} holds a blank task name")


def check_run_name(name: str) -> str:
    """A run name is one folder inside ``output_dir``: ``../x``, ``/abs`` or ``a/b`` would write elsewhere."""
    bad = not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0") or Path(name).is_absolute()
    require(not bad, f"run_name {name!r} must be a plain folder name inside output_dir "
                     "(no '/', '\\', not '.' or '..')")
    return name


def _show(value: Any) -> str:
    """``repr(value)`` for an error message, cut short: a megabyte-long override must not become the message."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (ints widen to floats); raise ConfigError otherwise.

    Floats must be finite: an infinite learning rate or a NaN norm passes every ``> 0`` check below and
    then voids training. A ``Literal`` accepts only its values, and the error lists them.
    """
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, str) and value in allowed:
            return value
        raise ConfigError(f"{where}: {key} = {_show(value)} is not one of {', '.join(map(str, allowed))}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except _NotFinite:
                raise
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {key} = {_show(value)} is not a {_name(tp)}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key} = {_show(value)} is not a list")
        return [_coerce(v, item, key, where) for v in value]
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an int beyond any float (1 followed by 400 zeros)
                number = math.inf
        elif isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is not None:
            if not math.isfinite(number):
                raise _NotFinite(f"{where}: {key} = {_show(value)} is not a finite number")
            return number
    if tp is str and type(value) is str and "\0" in value:  # no path, name or URI holds one (os calls refuse it)
        raise ConfigError(f"{where}: {key} = {_show(value)} contains a NUL character")
    if tp is int and type(value) is int and not -(2**63) <= value < 2**63:  # torch and numpy take int64 at most
        raise ConfigError(f"{where}: {key} = {_show(value)} is out of range (a 64-bit integer)")
    if tp in (int, str, bool) and (type(value) is tp):
        return value
    raise ConfigError(f"{where}: {key} = {_show(value)} is not a {_name(tp)}")


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


# Keys an earlier version had, and why they are gone: a YAML file that has one (a run folder written by that
# version) still loads, with a warning that the key is ignored; on the command line it is refused, saying why.
COMMAND_LINE = "command line"  # where a ``section.key=value`` override comes from, in errors and checks
RETIRED = {"federation.engine": "the command decides it: `fedcollm run` / `experiment` = simulation, "
                                "`deploy-local` / `flwr run` = deployment"}


def _build(cls, data: dict, where: str, prefix: str, obj):
    """Set ``data``'s keys on the dataclass instance ``obj`` (recursing into sections), checking each."""
    hints = typing.get_type_hints(cls)
    known = _fields(cls)
    for key, value in data.items():
        if f"{prefix}{key}" in RETIRED:
            why = f"{prefix}{key} is not a config key any more: {RETIRED[prefix + key]}"
            if where == COMMAND_LINE:
                raise ConfigError(f"{where}: {why}")
            log.warning("%s: ignored %s", where, why)
            continue
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (valid: {', '.join(known)})"
            raise ConfigError(f"{where}: unknown config key {prefix}{key}{hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {prefix}{key} is a section; give its keys ({prefix}{key}.KEY=...)")
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
    except (yaml.YAMLError, ValueError, RecursionError):  # ValueError: an int of > 4300 digits; deep [[[...]]]
        value = raw
    return key.strip().split("."), value


def read_text(path: Path, what: str = "config file") -> str:
    """A UTF-8 text file, or a ConfigError naming it (a stray binary file must not end in a traceback)."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})"
                          ) from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot be read ({exc.strerror or exc})") from None


def preset_names() -> list[str]:
    """The presets shipped in the package (``fedcollm/presets/NAME.yaml``, package data: found installed too)."""
    return sorted(p.name[: -len(".yaml")] for p in importlib.resources.files("fedcollm").joinpath("presets").iterdir()
                  if p.name.endswith(".yaml"))


def load_preset(name: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A shipped preset (``preset_names``) with overrides; an unknown name is a ConfigError listing them."""
    ref = importlib.resources.files("fedcollm").joinpath("presets", f"{name}.yaml")
    if not ref.is_file():
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(preset_names())}")
    with importlib.resources.as_file(ref) as path:
        return load_config(path, overrides)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file, then each ``a.b=value`` override, each checked on the way in."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        cfg = config_from_text(read_text(p), str(p), check=False)
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        _build(Config, nested, COMMAND_LINE, "", cfg)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Every field's range (each section's ``check``), then the checks that span sections.

    Only values are checked here, never this machine (GPU, files): clients parse the server's config
    with it too. ``build.preflight`` checks the machine before a run starts.
    """
    cfg.check()
    for name, section in (("llm", cfg.llm), ("slm", cfg.slm)):
        section.check(f"{name}.")
    cfg.federation.check()
    cfg.train.check()
    cfg.secagg.check()
    cfg.dp.check()
    cfg.kd.check()
    cfg.eval.check()
    cfg.data.check()
    cfg.mlflow.check()
    d = cfg.data
    aux = d.aux_tasks if d.aux_tasks is not None else cfg.tasks
    stray = [t for t in d.aux_unlabeled if t not in aux]
    require(not stray, f"data.aux_unlabeled names {', '.join(stray)}, which D^a is not cut from "
                       "(data.aux_tasks, else tasks)")
    require(not d.aux_unlabeled or cfg.kd.target == "choices",
            "data.aux_unlabeled needs kd.target=choices: the tokens target teacher-forces the gold answer, which "
            "an unlabeled question does not have")
    require(d.client_files is None or len(d.client_files) == cfg.federation.num_clients,
            f"data.client_files holds {len(d.client_files or [])} files for federation.num_clients="
            f"{cfg.federation.num_clients}: one file per client")
    require(not cfg.dp.enabled or cfg.federation.transfer_dtype == "float32",
            "dp.enabled needs federation.transfer_dtype=float32: rounding clipped updates to bf16 can push them "
            "past dp.clipping_norm")


def check_output_folder(path: str | Path, what: str) -> Path:
    """Refuse a folder path that is an existing file, or lies under one: mkdir would fail mid-way."""
    p = Path(path)
    for part in (p, *p.parents):
        exists, is_dir = _probe(part, p, what)
        if exists:
            require(is_dir, f"{what} {p}: {part} is a file, not a folder")
            break
    return p


def _probe(part: Path, p: Path, what: str) -> tuple[bool, bool]:
    """(exists, is a folder), or a ConfigError for a path the OS refuses to look at."""
    try:
        return part.exists(), part.is_dir()
    except OSError as exc:  # e.g. a name longer than the file system allows (ENAMETOOLONG)
        raise ConfigError(f"{what} {p}: not a usable path ({exc.strerror or exc})") from None


def check_output_file(path: str | Path, what: str) -> Path:
    """Refuse a file path that is an existing folder, or whose parent is (under) a file."""
    p = Path(path)
    require(not _probe(p, p, what)[1], f"{what} {p} is a folder; give a file name")
    check_output_folder(p.parent, what)
    return p


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


def config_from_text(text: str, where: str = "config text", check: bool = True) -> Config:
    """A config from YAML text (what the server sends clients in each train message).

    ``check=False`` leaves ``validate`` to the caller (``load_config`` checks after the overrides, so an
    override can repair a file's value, e.g. ``sim_workers`` together with ``num_clients``).
    """
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except (ValueError, RecursionError) as exc:  # an int of > 4300 digits; [[[...]]] nested past the stack
        raise ConfigError(f"{where}: not valid YAML ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: top level must be a mapping")
    cfg = _build(Config, data, where, "", Config())
    if check:
        validate(cfg)
    return cfg

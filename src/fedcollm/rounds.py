"""The round record: what one line of a run's ``metrics.jsonl`` holds, as one typed structure.

The federation writes one ``RoundRecord`` per finished round (round 0: the base models' scores and the
adapters' sizes); the run folder stores it (``to_json``) and gives it back (``from_json``), and every
reader (the line per round, the report, the plots, the trackers, the experiment) uses its fields
instead of string keys. A key this version does not know (a folder written by another version) is kept
in ``extra`` and written back unchanged, so rewriting a log never loses what was in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .config import ConfigError

Scores = dict[str, dict[str, dict[str, float]]]  # role (llm/slm) -> task -> {"acc", "acc_norm", "n", ...}


def headline(m: dict[str, float]) -> tuple[str, float]:
    """A task's one figure: its accuracy, or for instruction data (scored by its held-out responses, no accuracy)
    the perplexity of those responses."""
    return ("acc", float(m["acc"])) if "acc" in m else ("ppl", float(m["ppl"]))


@dataclass
class Comm:
    """Bytes on the wire this round: one entry per client sent to / received from (Flower's encoding)."""

    bytes_sent_per_client: list[int] = field(default_factory=list)
    bytes_received_per_client: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # keys of another version, kept as they were

    def to_json(self) -> dict[str, Any]:
        return {"bytes_sent_per_client": self.bytes_sent_per_client,
                "bytes_received_per_client": self.bytes_received_per_client, **self.extra}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Comm:
        known = {k: list(data[k]) for k in ("bytes_sent_per_client", "bytes_received_per_client") if k in data}
        return cls(**known, extra={k: v for k, v in data.items() if k not in known})

    def per_client(self, way: str) -> list[int]:
        """``way``: ``sent`` (server -> client) or ``received`` (client -> server)."""
        return self.bytes_sent_per_client if way == "sent" else self.bytes_received_per_client


@dataclass
class RoundRecord:
    """One finished round. ``eval`` is empty when the round was not scored (``eval.every_round: false``)."""

    round: int
    eval: Scores = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # clients, kd, train, eval: where the time went
    params: dict[str, dict[str, int]] | None = None  # round 0: base and trainable parameters per model
    sampled: dict[str, int] | None = None  # {"clients": trained, "of": online}
    clients: dict[str, list[dict]] | None = None  # contributors (with their weights), dropped, rejected
    strategy: str | None = None
    kd: dict[str, float] | None = None  # step 4's losses
    privacy: dict[str, Any] | None = None  # secure_aggregation, and dp (C, z, m, noise std, ε, δ)
    comm: Comm | None = None
    server_peak_rss_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def acc(self, role: str, task: str) -> float | None:
        """Accuracy of ``role`` on ``task`` this round (None when not scored)."""
        m = self.eval.get(role, {}).get(task)
        return None if m is None or "acc" not in m else float(m["acc"])

    def to_json(self) -> dict[str, Any]:
        """The record as one JSON object (fields that are None, and an empty ``eval`` or ``seconds``, are left
        out: a round not scored reads the same either way)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or value is None or (f.name in ("eval", "seconds") and not value):
                continue
            out[f.name] = value.to_json() if isinstance(value, Comm) else value
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "round record") -> RoundRecord:
        """A record read back; a missing or non-integer ``round`` is refused in one line naming ``where``."""
        if not isinstance(data.get("round"), int) or isinstance(data.get("round"), bool):
            raise ConfigError(f"{where}: a round record needs an integer 'round'")
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        if isinstance(kwargs.get("comm"), dict):
            kwargs["comm"] = Comm.from_json(kwargs["comm"])
        for key, kind in (("eval", dict), ("seconds", dict)):
            if not isinstance(kwargs.get(key, {}), kind):
                raise ConfigError(f"{where}: '{key}' must be a JSON object")
        return cls(**kwargs, extra={k: v for k, v in data.items() if k not in known})


def mean_bytes_per_client(records: list[RoundRecord], way: str) -> float | None:
    """Mean bytes per client per round, over the rounds that moved something (``way``: sent or received)."""
    per_round = [r.comm.per_client(way) for r in records if r.comm and r.comm.per_client(way)]
    return sum(map(sum, per_round)) / sum(map(len, per_round)) if per_round else None


def records_of(result: dict[str, Any], where: str = "result") -> list[RoundRecord]:
    """The rounds a method's saved result carries (``rounds``: their JSON), as records."""
    return [RoundRecord.from_json(r, f"{where}, round {i}") for i, r in enumerate(result.get("rounds", []))]

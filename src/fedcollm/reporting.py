"""What a person reads: one line per round while the run goes, a table and report.md at the end."""

from __future__ import annotations

import io
import os

from rich.console import Console
from rich.table import Table

from . import plots
from .config import Config
from .rounds import RoundRecord, headline, mean_bytes_per_client
from .runlog import RunDir

PLAIN_WIDTH = 1000  # columns where the output is no terminal (a log, a pipe, flwr run's stream): no line wraps


def make_console() -> Console:
    """Rich's console: the terminal's width on a terminal; elsewhere rich would cut the round table at 80
    columns, so ``$COLUMNS`` or ``PLAIN_WIDTH``."""
    console = Console()
    return console if console.is_terminal else Console(width=int(os.environ.get("COLUMNS") or PLAIN_WIDTH))


console = make_console()


def _acc(record: RoundRecord, role: str) -> str:
    ev = record.eval.get(role, {})
    return " ".join(f"{plots.task_label(t)}={_figure(m, 3)}" for t, m in ev.items()) or "-"


def _figure(m: dict, digits: int) -> str:
    """``0.512`` (an accuracy) or ``ppl 7.41`` (instruction data: the held-out responses' perplexity)."""
    name, value = headline(m)
    return f"{value:.{digits}f}" if name == "acc" else f"ppl {value:.2f}"


def duration(seconds: float) -> str:
    """``1 h 02 min``, ``4 min 10 s`` or ``12 s``: how long, in words a person reads at a glance."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def progress_line(method: str, t: int, rounds: int, round_seconds: list[float]) -> str:
    """``fedcollm round 2/3 · 4 min 10 s a round · ETA 4 min 10 s``: where a run is and when it ends."""
    if not round_seconds:
        return f"{method} round {t}/{rounds}"
    per = sum(round_seconds) / len(round_seconds)
    return f"{method} round {t}/{rounds} · {duration(per)} a round · ETA {duration(per * (rounds - t))}"


def print_round(record: RoundRecord, where: str = "") -> None:
    """One line per round: accuracies, bytes, KD losses, and (``where``) the progress and ETA."""
    t, comm, kd = record.round, record.comm, record.kd
    sent = f" | sent/client {comm.bytes_sent_per_client[0] / 1e6:.2f} MB" if comm and comm.bytes_sent_per_client else ""
    losses = f" | KD llm {kd['llm_loss']:.3f} slm {kd['slm_loss']:.3f}" if kd else ""
    label = where or ("zero-shot" if t == 0 else f"round {t}")
    console.print(f"[bold]{label}[/bold] LLM {_acc(record, 'llm')} | SLM {_acc(record, 'slm')}{sent}{losses}")


def header(title: str, cfg: Config, what: str) -> list[str]:
    """The first lines of every report: what was run, on which models, with how many clients and rounds."""
    return [f"# {title}", "", f"LLM `{cfg.llm.name}`, SLM `{cfg.slm.name}`, {cfg.federation.num_clients} clients, "
                              f"{cfg.federation.rounds} rounds, {what}", ""]


def adapter_share(params: dict) -> str:
    """θ's size against the SLM it adapts: what a client sends per round instead of the whole model."""
    slm = params["slm"]
    return f"{slm['trainable']:,} parameters = {100 * slm['trainable'] / slm['base']:.3f}% of the SLM's {slm['base']:,}"


def summary_table(records: list[RoundRecord]) -> Table:
    tasks = sorted({t for r in records for ev in r.eval.values() for t in ev})
    table = Table(title="FedCoLLM: accuracy per round (acc; ppl: perplexity of held-out responses)")
    table.add_column("round")
    for t in tasks:
        table.add_column(f"LLM {plots.task_label(t)}")
        table.add_column(f"SLM {plots.task_label(t)}")
    table.add_column("sent/client MB")
    table.add_column("received/client MB")
    for r in records:
        ev = r.eval
        cells = []
        for t in tasks:
            cells += [_figure(ev[role][t], 4) if t in ev.get(role, {}) else "-" for role in ("llm", "slm")]
        mb = [mean_bytes_per_client([r], way) for way in ("sent", "received")]
        table.add_row("0 (zero-shot)" if r.round == 0 else str(r.round), *cells,
                      *("-" if v is None else f"{v / 1e6:.3f}" for v in mb))
    return table


def run_plots(run: RunDir, cfg: Config) -> bool:
    """accuracy_per_round.png of a run: each model and task per round, the base model's accuracy dashed."""
    records = run.metrics()
    zero = next((r.eval for r in records if r.round == 0 and r.eval), None)
    curve = [r for r in records if r.round > 0 and r.eval]
    return plots.accuracy_per_round(run.path / "accuracy_per_round.png", {cfg.method: curve},
                                    {"zero_shot": zero} if zero else {}, cfg.eval_tasks(),
                                    title=f"run {run.path.name}") is not None


def write_run_report(run: RunDir, cfg: Config, announce: bool = True) -> None:
    """The summary table on screen, ``report.md`` and the plots in the run folder; with ``announce``, a last
    line naming the report (off where the caller names it once the run's processes have ended)."""
    records = run.metrics()
    table = summary_table(records)
    console.print(table)
    params = next((r.params for r in records if r.params), None)
    lines = header(f"FedCoLLM run `{run.path.name}`", cfg,
                   f"tasks {', '.join(cfg.tasks)}, evaluated on {cfg.eval.split}, "
                   f"{cfg.eval.split_limit() or 'all'} questions per task.")
    rec = Console(record=True, width=PLAIN_WIDTH, file=io.StringIO())
    rec.print(table)
    lines += ["```", rec.export_text().rstrip(), "```", ""]
    if params:
        lines += [f"SLM adapter θ: {adapter_share(params)} (what each client sends per round, vs full-model FedAvg)."]
    if run_plots(run, cfg):
        lines += ["", "![accuracy per round](accuracy_per_round.png)"]
    (run.path / "report.md").write_text("\n".join(lines) + "\n")
    if announce:
        console.print(f"report: {run.path / 'report.md'}", soft_wrap=True)  # the last line, whole

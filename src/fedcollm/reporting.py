"""What a person reads: one line per round while the run goes, a table and report.md at the end."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from .config import Config
from .runlog import RunDir

console = Console()


def _acc(record: dict, role: str) -> str:
    ev = record.get("eval", {}).get(role, {})
    return " ".join(f"{t}={m['acc']:.3f}" for t, m in ev.items()) or "-"


def print_round(record: dict) -> None:
    t = record["round"]
    comm = record.get("comm")
    sent = f" | sent/client {comm['bytes_sent_per_client'][0] / 1e6:.2f} MB" if comm else ""
    kd = record.get("kd")
    losses = f" | KD llm {kd['llm_loss']:.3f} slm {kd['slm_loss']:.3f}" if kd else ""
    label = "zero-shot" if t == 0 else f"round {t}"
    console.print(f"[bold]{label}[/bold] LLM {_acc(record, 'llm')} | SLM {_acc(record, 'slm')}{sent}{losses}")


def summary_table(records: list[dict]) -> Table:
    tasks = sorted({t for r in records for ev in r.get("eval", {}).values() for t in ev})
    table = Table(title="FedCoLLM: accuracy per round (acc)")
    table.add_column("round")
    for t in tasks:
        table.add_column(f"LLM {t}")
        table.add_column(f"SLM {t}")
    table.add_column("sent/client MB")
    table.add_column("received/client MB")
    for r in records:
        ev = r.get("eval", {})
        cells = []
        for t in tasks:
            cells += [f"{ev[role][t]['acc']:.4f}" if t in ev.get(role, {}) else "-" for role in ("llm", "slm")]
        comm = r.get("comm")
        sent = f"{sum(comm['bytes_sent_per_client']) / len(comm['bytes_sent_per_client']) / 1e6:.3f}" if comm else "-"
        recv = comm and comm["bytes_received_per_client"]
        recv_mb = f"{sum(recv) / len(recv) / 1e6:.3f}" if recv else "-"
        table.add_row("0 (zero-shot)" if r["round"] == 0 else str(r["round"]), *cells, sent, recv_mb)
    return table


def write_run_report(run: RunDir, cfg: Config) -> None:
    records = run.metrics()
    table = summary_table(records)
    console.print(table)
    params = next((r["params"] for r in records if "params" in r), None)
    lines = [f"# FedCoLLM run `{run.path.name}`", "",
             f"LLM `{cfg.llm.name}`, SLM `{cfg.slm.name}`, {cfg.federation.num_clients} clients, "
             f"{cfg.federation.rounds} rounds, tasks {', '.join(cfg.tasks)}, eval limit {cfg.eval.limit}.", ""]
    rec = Console(record=True, width=160, file=io.StringIO())
    rec.print(table)
    lines += ["```", rec.export_text().rstrip(), "```", ""]
    if params:
        slm = params["slm"]
        lines += [f"SLM adapter θ: {slm['trainable']:,} parameters = {100 * slm['trainable'] / slm['base']:.3f}% "
                  f"of the SLM's {slm['base']:,} (what each client sends per round, vs full-model FedAvg)."]
    (run.path / "report.md").write_text("\n".join(lines) + "\n")

"""What a person reads while a run goes: the progress line and its ETA."""

from __future__ import annotations

import re

from fedcollm.reporting import duration, progress_line
from fedcollm.rounds import Comm, RoundRecord, mean_bytes_per_client


def test_the_progress_line_names_the_run_the_round_and_an_eta_from_the_rounds_so_far():
    assert progress_line("exp (fedcollm)", 1, 3, []) == "exp (fedcollm) round 1/3"
    line = progress_line("exp (fedcollm)", 2, 5, [100.0, 140.0])
    assert line == "exp (fedcollm) round 2/5 · 2 min 00 s a round · ETA 6 min 00 s"
    assert progress_line("x", 5, 5, [10.0]).endswith("ETA 0 s")
    assert [duration(s) for s in (9.6, 61, 3725)] == ["10 s", "1 min 01 s", "1 h 02 min"]


def test_mean_bytes_per_client_counts_only_rounds_that_moved_something():
    records = [RoundRecord(0), RoundRecord(1, comm=Comm([5], [10, 30])), RoundRecord(2, comm=Comm([5], [20])),
               RoundRecord(3, comm=Comm([5], []))]
    assert mean_bytes_per_client(records, "received") == 20
    assert mean_bytes_per_client(records, "sent") == 5
    assert mean_bytes_per_client(records[:1], "received") is None


def test_a_runs_report_is_written_and_its_path_is_the_last_line_printed(tmp_path, capsys):
    from fedcollm.config import load_config
    from fedcollm.reporting import write_run_report
    from fedcollm.runlog import RunDir

    cfg = load_config(None, [f"output_dir={tmp_path}", "run_name=r", "tasks=[arc_easy]"])
    run = RunDir.create(cfg)
    run.log(RoundRecord(0, eval={"slm": {"arc_easy": {"acc": 0.25, "n": 4}}}))
    run.log(RoundRecord(1, eval={"slm": {"arc_easy": {"acc": 0.5, "n": 4}}}, comm=Comm([10], [10])))
    write_run_report(run, cfg)
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == f"report: {run.path / 'report.md'}" and (run.path / "report.md").is_file()
    report = (run.path / "report.md").read_text()
    assert report.startswith("# FedCoLLM run `r`") and "tasks arc_easy, evaluated on" in report
    table = report[report.index("```") + 3:report.rindex("```")]
    rows = [ln for ln in table.splitlines() if re.match(r"\W*[01]\W", ln)]  # one row a round, in order
    assert [ln.strip("│┃ ").split()[0] for ln in rows] == ["0", "1"], table
    assert "0.250" in rows[0] and "0.500" in rows[1] and "0.500" not in rows[0], table
    assert "![accuracy per round](accuracy_per_round.png)" in report and (run.path / "accuracy_per_round.png").is_file()


def test_the_round_table_is_whole_where_the_output_is_no_terminal():
    import os
    import subprocess
    import sys

    # no COLUMNS: readline, once loaded, exports the C-level COLUMNS that a child would inherit
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    code = ("from fedcollm.reporting import console, summary_table\n"
            "from fedcollm.rounds import RoundRecord\n"
            "ev = {r: {t: {'acc': 0.5} for t in ('arc_easy', 'arc_challenge', 'openbookqa', 'commonsense_qa')}"
            " for r in ('llm', 'slm')}\n"
            "console.print(summary_table([RoundRecord(0, eval=ev), RoundRecord(1, eval=ev)]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    for column in ("LLM CQA", "SLM OBQA", "received/client MB", "0 (zero-shot)"):
        assert column in out, out  # cut at 80 columns, rich would wrap or elide these
    assert "…" not in out

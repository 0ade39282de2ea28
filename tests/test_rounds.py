"""The round record: one typed structure, written and read back the same, old folders included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcollm.config import ConfigError
from fedcollm.rounds import Comm, RoundRecord, records_of
from fedcollm.runlog import RunDir

ROOT = Path(__file__).resolve().parents[1]


def test_a_record_survives_the_log_and_keeps_keys_it_does_not_know(tmp_path):
    (tmp_path / "config.yaml").write_text("{}\n")
    run = RunDir(tmp_path)
    rec = RoundRecord(2, eval={"slm": {"arc_easy": {"acc": 0.5, "n": 10}}}, seconds={"train": 3.0},
                      comm=Comm([100, 100], [40]), kd={"llm_loss": 1.0}, extra={"from_a_later_version": [1]})
    run.log(RoundRecord(0, params={"slm": {"base": 10, "trainable": 1}}))
    run.log(rec)
    back = run.metrics()
    assert back == [RoundRecord(0, params={"slm": {"base": 10, "trainable": 1}}), rec]
    assert back[1].acc("slm", "arc_easy") == 0.5 and back[1].acc("llm", "arc_easy") is None
    run.truncate_after(2)  # rewriting the log loses nothing
    assert run.metrics() == back
    assert "server_peak_rss_mb" not in json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[1])


@pytest.mark.parametrize("bad", [{"eval": {}}, {"round": "1"}, {"round": True}, {"round": 1, "eval": [1]}])
def test_a_record_without_a_round_or_with_a_wrong_shape_is_refused_by_where(bad):
    with pytest.raises(ConfigError, match="^here: "):
        RoundRecord.from_json(bad, "here")


def _as_written(raw: dict) -> dict:
    """``raw`` with an empty ``eval`` or ``seconds`` left out: "not scored", said the other way."""
    return {k: v for k, v in raw.items() if not (k in ("eval", "seconds") and v == {})}


def test_every_committed_round_log_and_method_result_reads_back_as_written():
    logs = sorted((ROOT / "results").rglob("metrics.jsonl"))
    assert logs  # the committed results are there to read
    for path in logs:
        for line in path.read_text().splitlines():
            raw = json.loads(line)
            assert RoundRecord.from_json(raw, str(path)).to_json() == _as_written(raw), path
    for path in sorted((ROOT / "results").rglob("methods/*.json")):
        result = json.loads(path.read_text())
        if isinstance(result, dict) and result.get("rounds"):
            back = [r.to_json() for r in records_of(result, str(path))]
            assert back == [_as_written(r) for r in result["rounds"]], path

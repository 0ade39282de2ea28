"""The paper's experiment in one call: every method on the same splits and budgets, then a report.

Each method's result is a JSON file under ``OUT/methods/``; a finished method is skipped on rerun and
a failed one leaves ``<method>.error`` without losing the others. ``report.md``, ``results.csv`` and
PNG plots are rebuilt from whatever results exist.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import logging
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import plots
from ..build import load_aux, preflight
from ..config import Config, ConfigError, KDSection, config_differences, load_config, save_config
from ..data.schema import DataError, is_instructions
from ..plots import task_label
from ..precision import cpu_info, resolve_precision
from ..reporting import header
from ..rounds import RoundRecord, mean_bytes_per_client, records_of
from ..runlog import RunDir
from ..stats import Comparison
from ..tracking import Trackers, flat, mlflow_uri, recorded_ids
from . import baselines
from .compare import compare_results
from .fedcollm import run_fedcollm
from .final_test import adapters_dir, keep_run_adapters, on_split, score_on_test, sealed

log = logging.getLogger(__name__)
# The paper's five methods, and no_kd: Algorithm 1 with λ = 0 both ways (FedAvg, then SFT on D^a for each model),
# the baseline that tells what the distillation itself gives each model
METHODS = ("zero_shot", "standalone", "fedavg", "centralized", "no_kd", "fedcollm")
# Asked for by name (--methods): FedCoLLM with the paper's transfer (paper-faithful's kd) beside the config's
# own, on the same splits and budget, so that one report states the claims for both.
VARIANTS = ("fedcollm_paper",)
PAPER_KD = ("weight", "llm_weight", "slm_weight", "mix", "select", "temperature", "top_k", "target", "token_ce")
# The paper's numbers (accuracy %, its Tables 1 and 2), settings S1 GPT-2, S2 OPT, S3 LLaMA-2.
PAPER_LLM = {  # Zero-Shot / Centralized / FedCoLLM
    "commonsense_qa": ((36.3, 54.7, 53.5), (48.7, 68.6, 68.1), (39.5, 69.0, 67.1)),
    "openbookqa": ((19.4, 28.2, 25.4), (27.6, 34.0, 34.4), (31.8, 39.8, 37.8)),
    "arc_challenge": ((21.7, 28.8, 27.4), (30.7, 37.1, 36.0), (40.0, 49.0, 45.4)),
    "arc_easy": ((53.2, 59.5, 59.5), (65.6, 70.2, 69.3), (69.3, 76.8, 75.2)),
}
PAPER_SLM = {  # Zero-Shot / Standalone / FedAvg / FedCoLLM
    "commonsense_qa": ((28.3, 40.5, 41.7, 43.0), (41.9, 57.3, 58.6, 60.8), (30.1, 56.1, 56.8, 57.7)),
    "openbookqa": ((16.4, 17.3, 15.8, 17.8), (23.4, 26.7, 27.2, 29.2), (23.2, 27.8, 26.0, 28.8)),
    "arc_challenge": ((19.0, 21.4, 20.9, 21.8), (23.4, 28.2, 28.8, 29.4), (26.7, 29.3, 29.4, 30.6)),
    "arc_easy": ((43.8, 46.4, 46.3, 46.8), (57.0, 59.93, 59.97, 60.01), (53.1, 60.1, 60.3, 61.1)),
}


def paper_transfer(cfg: Config) -> Config:
    """``cfg`` with the paper's transfer (the ``kd`` defaults: CE + λ·KL both ways, λ = 1, every sequence,
    τ = 1, top-k 128); KD's budget and optimiser settings (epochs, steps, batch, lrs) stay the config's."""
    c, paper = copy.deepcopy(cfg), KDSection()
    for key in PAPER_KD:
        setattr(c.kd, key, getattr(paper, key))
    return c


def no_transfer(cfg: Config) -> Config:
    """``cfg`` with λ = 0 both ways: step 4 is SFT on D^a for each model (the LLM then never sees anything that
    came from a client); KD's budget, batch and learning rates stay the config's."""
    c = copy.deepcopy(cfg)
    c.kd.weight, c.kd.llm_weight, c.kd.slm_weight, c.kd.select = 0.0, 0.0, 0.0, "none"
    return c


def _federated(method: str, algorithm: str | None = None,
               adjust: Callable[[Config], Config] = lambda c: c) -> Callable[[Config, Path], dict]:
    """A federated method run as ``algorithm`` (default: the method itself) on ``adjust(cfg)``."""
    def run(cfg: Config, out: Path) -> dict:
        c = adjust(method_config(cfg, out))
        c.method, c.output_dir, c.run_name = algorithm or method, str(out / "runs"), method
        c.eval.zero_shot = False  # the zero_shot method scores the base models once for everyone
        # FedAvg, no_kd and the FedCoLLM variants broadcast the same θ^1: their round-1 client updates are one
        # computation, memoized by its inputs (federation/update_cache.py), unless the config names a cache
        c.federation.update_cache = c.federation.update_cache or str(out / "update-cache")
        existing = out / "runs" / method
        run_dir = run_fedcollm(None, resume=str(existing)) if existing.exists() else run_fedcollm(c)
        keep_run_adapters(run_dir, adapters_dir(out, method))
        records = RunDir(run_dir.path).metrics()
        return {**records[-1].eval, "rounds": [r.to_json() for r in records], "params": records[0].params}

    return run


# Each runner trains on the config it is given (the dev one, under the seal), returns its dev figures and
# leaves its final adapters in adapters_dir(out, method) for the test phase (final_test.py).
RUNNERS: dict[str, Callable[[Config, Path], dict]] = {
    "zero_shot": lambda cfg, out: baselines.zero_shot(cfg),
    "standalone": lambda cfg, out: baselines.standalone(cfg, save_to=adapters_dir(out, "standalone")),
    "centralized": lambda cfg, out: baselines.centralized(cfg, save_to=adapters_dir(out, "centralized")),
    "fedavg": _federated("fedavg"),
    "fedcollm": _federated("fedcollm"),
    "no_kd": _federated("no_kd", "fedcollm", no_transfer),
    "fedcollm_paper": _federated("fedcollm_paper", "fedcollm", paper_transfer),
}
FEDERATED = ("fedavg", "no_kd", "fedcollm", "fedcollm_paper")


def method_config(cfg: Config, out: Path) -> Config:
    """A method's config: MLflow runs go to the experiment's store (``OUT/mlflow.db`` unless ``mlflow.uri``
    says otherwise), nested under the experiment's parent run."""
    c = copy.deepcopy(cfg)
    if "mlflow" in cfg.tracking:
        c.mlflow.uri = mlflow_uri(cfg, out)
        c.mlflow.parent_run = parent_run(cfg, out)
    return c


def parent_trackers(cfg: Config, out: Path) -> Trackers:
    """The experiment's own MLflow run (created once, its id in ``OUT/tracking.json``), parent of every method's."""
    c = copy.deepcopy(cfg)
    c.mlflow.uri = mlflow_uri(cfg, out)
    c.tracking = ["mlflow"]
    return Trackers(out, c, name=f"experiment {out.name}")


def parent_run(cfg: Config, out: Path) -> str:
    """The parent run's id: read from ``OUT/tracking.json`` once the run exists, so that each method's
    config does not reopen the MLflow store."""
    return recorded_ids(out).get("mlflow_run_id") or parent_trackers(cfg, out).items[0].run_id


def track_result(cfg: Config, out: Path, method: str, result: dict) -> None:
    """A method without rounds (zero-shot, Standalone, Centralized): its final accuracy as step 0 of its
    own TensorBoard folder and MLflow child run (``OUT/methods/METHOD.tracking/``)."""
    if not cfg.tracking:
        return
    folder = out / "methods" / f"{method}.tracking"
    folder.mkdir(parents=True, exist_ok=True)
    trackers = Trackers(folder, method_config(cfg, out), name=method)
    trackers.sync([RoundRecord(round=0, eval={r: result[r] for r in ("llm", "slm") if r in result})])
    trackers.finish()


def run_on_dev(cfg: Config, out: Path, method: str) -> dict:
    """Phase 1: train the method and evaluate it on dev only, the test splits sealed (``final_test``).
    Its dev figures are kept in ``methods/METHOD.dev.json``; a finished phase is not run again."""
    path = out / "methods" / f"{method}.dev.json"
    if path.exists():
        return json.loads(path.read_text())
    log.info("%s: training, evaluated on dev (test splits sealed)", method)
    with sealed():
        dev = {**RUNNERS[method](on_split(cfg, "dev"), out), "split": "dev"}
    path.write_text(json.dumps(dev, indent=1) + "\n")
    if method not in FEDERATED:  # federated runs track themselves, round by round
        track_result(cfg, out, method, dev)
    return dev


def track_test(cfg: Config, out: Path, method: str, result: dict) -> None:
    """The method's test figures on the experiment's parent MLflow run (``test/METHOD/ROLE/TASK/acc``)."""
    if "mlflow" in cfg.tracking:
        roles = {r: result[r] for r in ("llm", "slm") if r in result}
        parent_trackers(cfg, out).items[0].log(0, flat({"test": {method: roles}}), mark=False)


def run_experiment(cfg: Config, out_dir: str | Path, methods: Sequence[str] = METHODS, dev_only: bool = False) -> Path:
    """Run every method not finished yet in ``out_dir``, then write the report from all of them.

    Each method is tuned and evaluated on dev with the test splits sealed, then its final adapters are
    scored on test once (``final_test``): what the report's tables and claims show. ``dev_only`` stops
    after the dev phase (a sweep of variants: the test split stays sealed and unread); running the same
    folder again without it scores the already-trained methods on test, retraining nothing.

    A folder holds one config: finished methods are only reused when the config is the same (else
    the report would mix splits and budgets), and a config that cannot run is refused before
    anything is written.
    """
    if "fedcollm_paper" in methods and (cfg.data.aux_unlabeled
                                        or any(q.answer is None for q in load_aux(cfg))):
        raise ConfigError("fedcollm_paper's token-level transfer teacher-forces gold answers, and data.aux_unlabeled "
                          "(or a task of unanswered questions) gives D^a questions without any: leave fedcollm_paper "
                          "out of --methods")
    prose = [t for t in {*cfg.tasks, *cfg.eval_tasks()} if is_instructions(t)]
    if prose:  # its report, claims and intervals are over questions answered right or wrong
        raise DataError(f"{sorted(prose)[0]} is instruction data, scored by perplexity: fedcollm experiment compares "
                        "accuracies; run it with fedcollm run (its report shows the perplexity per round)")
    # dev_only: the whole sweep under the seal, preflight and report included: no test file is opened
    with sealed() if dev_only else contextlib.nullcontext():
        return _run_methods(cfg, Path(out_dir), methods, dev_only)


def _run_methods(cfg: Config, out: Path, methods: Sequence[str], dev_only: bool) -> Path:
    if (out / "config.yaml").is_file():
        changed = config_differences(load_config(out / "config.yaml"), cfg)
        if changed:
            raise ConfigError(f"{out} holds an experiment with another config (differs in {', '.join(changed)}); "
                              "pass --out NEW_FOLDER, or the same config to continue it")
    check_machine(cfg, out)
    preflight(on_split(cfg, "dev") if dev_only else cfg)
    if "fedcollm_paper" in methods and paper_transfer(cfg).kd == cfg.kd:
        log.warning("fedcollm_paper repeats fedcollm: this config's transfer already is the paper's")
    (out / "methods").mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    if not (out / MACHINE).is_file():
        (out / MACHINE).write_text(json.dumps({"precision": resolve_precision(cfg.precision), "cpu": cpu_info()},
                                              indent=1) + "\n")
    for m in methods:
        done, failed = out / "methods" / f"{m}.json", out / "methods" / f"{m}.error"
        if done.exists():
            log.info("%s: already finished, skipped", m)
            continue
        try:
            dev = run_on_dev(cfg, out, m)
            if dev_only:
                failed.unlink(missing_ok=True)
                continue
            log.info("%s: scoring its final adapters on the test split, once", m)
            result = {**score_on_test(cfg, out, m), "split": "test"}
            if "params" in dev:
                result["params"] = dev["params"]
        except Exception:  # one method's failure must not lose the others' results
            failed.write_text(traceback.format_exc())
            log.error("%s failed; see %s", m, failed)
            continue
        failed.unlink(missing_ok=True)
        done.write_text(json.dumps(result, indent=1) + "\n")
        track_test(cfg, out, m, result)
    write_report(out, cfg)
    if "mlflow" in cfg.tracking:  # the parent run: the experiment's report, table and plots as artifacts
        parent_trackers(cfg, out).finish()
    return out


MACHINE = "machine.json"  # the precision the folder's methods ran in, and the CPU: recorded when it is created


def check_machine(cfg: Config, out: Path) -> None:
    """One folder, one precision: bf16 and fp32 rows differ by more than noise, so a table must not mix them.
    A folder created in one precision is refused, in one line naming both, where this machine would pick
    the other (``precision: auto`` on another CPU, or an explicit ``precision=``)."""
    recorded = out / MACHINE
    if not recorded.is_file():
        return
    then, now = json.loads(recorded.read_text())["precision"], resolve_precision(cfg.precision)
    if then != now:
        raise ConfigError(f"{out} was run in {then} and this machine would run it in {now} (precision: "
                          f"{cfg.precision}); one experiment keeps one precision: continue it where {then} "
                          f"is picked, or pass --out NEW_FOLDER")


def failed_methods(out: Path) -> list[str]:
    return sorted(p.stem for p in (out / "methods").glob("*.error"))


def _load(out: Path, split: str = "test") -> dict[str, dict]:
    """Each method's results on ``split``: ``methods/METHOD.json`` (test) or ``methods/METHOD.dev.json``."""
    dev = ".dev.json"
    files = sorted((out / "methods").glob("*.json"))
    if split == "dev":
        return {p.name[: -len(dev)]: json.loads(p.read_text()) for p in files if p.name.endswith(dev)}
    return {p.stem: json.loads(p.read_text()) for p in files if not p.name.endswith(dev)}


def _cell(results: dict, method: str, role: str, task: str) -> str:
    m = results.get(method, {}).get(role, {}).get(task)
    return f"{100 * m['acc']:.1f}" if m else "-"


# The paper's claims, as (model, method a, method b, expectation): a > b ("better") or a ≈ b ("same").
CLAIMS = (
    ("llm", "fedcollm", "zero_shot", "better"),
    ("llm", "fedcollm", "centralized", "same"),
    ("slm", "fedcollm", "fedavg", "better"),
    ("slm", "fedcollm", "standalone", "better"),
    ("slm", "fedcollm", "zero_shot", "better"),
    # what each model owes the other: no_kd is the same run with λ = 0, so the difference is the distillation
    ("slm", "fedcollm", "no_kd", "no harm"), ("llm", "fedcollm", "no_kd", "no harm"),
    ("slm", "fedcollm", "no_kd", "better"),  # what the LLM teaches the SLM
    ("llm", "fedcollm", "no_kd", "better"),  # the clients' data reaching the LLM through the SLM
)
SYMBOL = {"better": ">", "same": "≈", "no harm": "≥"}
# With the fedcollm_paper variant: the same claims for it, then whether the config's transfer beats the paper's.
VARIANT_CLAIMS = tuple((role, "fedcollm_paper", b, e) for role, a, b, e in CLAIMS) + (
    ("llm", "fedcollm", "fedcollm_paper", "better"), ("slm", "fedcollm", "fedcollm_paper", "better"))


def claims_section(results: dict, tasks: list[str], split: str = "test") -> list[str]:
    """One row per claim and task (and all tasks pooled): difference, 95% interval, McNemar p, verdict."""
    lines = ["", f"## Which of the paper's claims hold here (on {split})", "",
             "Difference in accuracy points (a − b) on the same questions, paired bootstrap 95% interval "
             "(10,000 resamples of the questions), exact McNemar p (binary outcomes only; Standalone is a mean "
             "over clients). \"within noise\" = the interval contains 0. A \"≈\" claim holds only if the whole "
             "interval lies within ±3 points (the paper's FedCoLLM is 0-3 points below Centralized). A \"≥\" claim (no "
             "harm) holds unless the whole interval is below 0.", "",
             "| claim | task | n | a − b | 95% interval | McNemar p | verdict |", "|---|---|---|---|---|---|---|"]
    for role, a, b, expect in CLAIMS + (VARIANT_CLAIMS if "fedcollm_paper" in results else ()):
        claim = f"{role.upper()}: {a} {SYMBOL[expect]} {b}"
        for r in compare_results(results.get(a, {}), [role], results.get(b, {}), [role], tasks):
            task = "**all**" if r.task == "all" else task_label(r.task)
            if r.stats is not None:
                lines.append(_claim_row(claim, task, r.stats, expect))
            elif "different questions" in r.note:  # a method without per-question outcomes is left out
                lines.append(f"| {claim} | {task} | - | - | - | - | {r.note} |")
    return lines


def _claim_row(claim: str, task: str, c: Comparison, expect: str) -> str:
    p = "-" if c.p is None else f"{c.p:.3f}"
    return f"| {claim} | {task} | {c.n} | {c.diff:+.1f} | [{c.lo:+.1f}, {c.hi:+.1f}] | {p} | {c.verdict(expect)} |"


def write_report(out: Path, cfg: Config) -> None:
    """report.md (tables 1-3 and the claims), results.csv and the plots, from whatever results exist."""
    results, dev = _load(out), _load(out, "dev")
    # A dev-only folder (a sweep, ``dev_only``) shows its dev figures in the tables, labelled as such.
    shown, split = (results, "test") if results or not dev else (dev, "dev")
    tasks = cfg.eval_tasks()
    n = {t: shown.get("fedcollm", shown.get("zero_shot", {})).get("slm", {}).get(t, {}).get("n", "?")
         for t in tasks}
    lines = header(f"FedCoLLM experiment `{out.name}`", cfg, f"{split} questions per task: "
                   + ", ".join(f"{task_label(t)} {n[t]}" for t in tasks) + ". Accuracy in %.")
    if split == "dev":
        lines += ["", "**Dev only**: every method here was trained and evaluated on the dev split with the test "
                  "splits sealed, and nothing was scored on test. Tables 1-2 and the claims below are dev "
                  "figures, for choosing between variants; the same command without `--dev-only` scores the "
                  "kept adapters on test once.", ""]
    elif dev:
        lines += ["", "Every method was trained and evaluated on the dev split with the test splits sealed; its "
                  "final adapters (`adapters/`) were then scored once on test. Tables 1-2 and the claims are "
                  "test; the per-round plot and the dev table are what choices are made on.", ""]
    lines += accuracy_tables(shown, tasks) + owes_table(shown, tasks)
    lines += communication_table(dev.get("fedcollm") or results.get("fedcollm", {}))
    lines += claims_section(shown, tasks, split) + (dev_table(dev, tasks) if split == "test" else [])
    failed = failed_methods(out)
    if failed:
        lines += ["", f"Failed methods (see methods/*.error): {', '.join(failed)}"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    write_results_csv(out / "results.csv", shown)
    _plots(out, results, dev, tasks, "dev" if dev else cfg.eval.split)


def accuracy_tables(results: dict, tasks: list[str]) -> list[str]:
    """Tables 1 (server LLM) and 2 (client SLM) of the paper, ours beside the paper's three settings."""
    lines = ["## Table 1: server LLM", "",
             "| task | Zero-Shot | Centralized | FedCoLLM | paper S1 / S2 / S3 (ZS, Cent., FedCoLLM) |",
             "|---|---|---|---|---|"]
    for t in tasks:
        paper = " / ".join("(" + ", ".join(map(str, s)) + ")" for s in PAPER_LLM[t])
        cells = [_cell(results, m, "llm", t) for m in ("zero_shot", "centralized", "fedcollm")]
        lines.append(f"| {task_label(t)} | " + " | ".join(cells) + f" | {paper} |")
    lines += ["", "## Table 2: client SLM (Standalone: mean over clients)", "",
              "| task | Zero-Shot | Standalone | FedAvg | FedCoLLM | paper S1 / S2 / S3 (ZS, SA, FedAvg, FedCoLLM) |",
              "|---|---|---|---|---|---|"]
    for t in tasks:
        paper = " / ".join("(" + ", ".join(map(str, s)) + ")" for s in PAPER_SLM[t])
        cells = [_cell(results, m, "slm", t) for m in ("zero_shot", "standalone", "fedavg", "fedcollm")]
        lines.append(f"| {task_label(t)} | " + " | ".join(cells) + f" | {paper} |")
    if "fedcollm_paper" in results:
        lines += ["", "FedCoLLM with the paper's transfer (`fedcollm_paper`: paper-faithful's `kd`, the rest of "
                  "this config), beside FedCoLLM with this config's:", "",
                  "| task | LLM, paper's KD | LLM, this config's | SLM, paper's KD | SLM, this config's |",
                  "|---|---|---|---|---|"]
        for t in tasks:
            cells = [_cell(results, m, role, t) for role in ("llm", "slm") for m in ("fedcollm_paper", "fedcollm")]
            lines.append(f"| {task_label(t)} | " + " | ".join(cells) + " |")
    return lines


def owes_table(results: dict, tasks: list[str]) -> list[str]:
    """Each model's gain, step by step: what SFT on D^a gives (no_kd) and what the distillation adds (FedCoLLM)."""
    if "no_kd" not in results:
        return []
    lines = ["", "## What each model owes the other (no_kd: the same run with λ = 0 both ways)", "",
             "LLM: Zero-Shot → no_kd (SFT on D^a only) → FedCoLLM (plus the KL toward the federated SLM). "
             "SLM: FedAvg → no_kd (plus SFT on D^a) → FedCoLLM (plus the KL toward the LLM).", "",
             "| task | LLM Zero-Shot | LLM no_kd | LLM FedCoLLM | SLM FedAvg | SLM no_kd | SLM FedCoLLM |",
             "|---|---|---|---|---|---|---|"]
    cells = (("llm", "zero_shot"), ("llm", "no_kd"), ("llm", "fedcollm"), ("slm", "fedavg"), ("slm", "no_kd"),
             ("slm", "fedcollm"))
    for t in tasks:
        lines.append(f"| {task_label(t)} | " + " | ".join(_cell(results, m, role, t) for role, m in cells) + " |")
    return lines


def communication_table(fed: dict) -> list[str]:
    """Table 3: what a client sends and receives per round, against full-model FedAvg."""
    if not fed.get("params"):
        return []
    slm = fed["params"]["slm"]
    rounds = records_of(fed, "fedcollm result")
    sent, recv = (mean_bytes_per_client(rounds, way) or 0 for way in ("sent", "received"))
    return ["", "## Table 3: transmitted per client per round", "",
            "| | parameters | % of SLM | bytes down | bytes up |", "|---|---|---|---|---|",
            f"| full-model FedAvg | {slm['base']:,} | 100 | {4 * slm['base']:,} | {4 * slm['base']:,} |",
            f"| FedCoLLM (LoRA θ) | {slm['trainable']:,} | {100 * slm['trainable'] / slm['base']:.3f} | "
            f"{sent:,.0f} | {recv:,.0f} |",
            "", "Paper: GPT-2 124M vs 0.29M (0.24%), OPT 1316M vs 3.15M (0.24%), LLaMA-2 1345M vs 3.15M (0.23%)."]


def write_results_csv(path: Path, results: dict) -> None:
    """One row per method, model and task: what a spreadsheet or pandas wants."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "model", "task", "acc", "acc_norm", "n"])
        for method, res in results.items():
            for role in ("llm", "slm"):
                for task, m in res.get(role, {}).items():
                    w.writerow([method, role, task, m["acc"], m.get("acc_norm"), m.get("n")])


def dev_table(dev: dict, tasks: list[str]) -> list[str]:
    """Each method's final dev accuracy (what presets and knobs are chosen on), per model and task."""
    if not dev:
        return []
    lines = ["", "## Dev split (choices are made here, never on test)", "",
             "| model | method | " + " | ".join(task_label(t) for t in tasks) + " |",
             "|---|---|" + "---|" * len(tasks)]
    for role in ("llm", "slm"):
        for m in METHODS + VARIANTS:
            if role in dev.get(m, {}):
                lines.append(f"| {role.upper()} | {m} | " + " | ".join(_cell(dev, m, role, t) for t in tasks) + " |")
    return lines


def _plots(out: Path, results: dict, dev: dict, tasks: list[str], split: str) -> None:
    """accuracy_per_round.png (FedCoLLM and FedAvg per round against Zero-Shot, Centralized and Standalone;
    on dev when the experiment has dev results, else on its test results), final_accuracy.png (every method
    on test, with 95% intervals) and bytes_per_round.png."""
    per_round = dev or results
    curves = {m: records_of(per_round[m], f"{m} result") for m in FEDERATED if m in per_round}
    references = {m: per_round[m] for m in ("zero_shot", "centralized", "standalone") if m in per_round}
    plots.accuracy_per_round(out / "accuracy_per_round.png", curves, references, tasks,
                             title=f"accuracy per round on {split} (horizontal lines: methods without rounds)")
    plots.final_accuracy_bars(out / "final_accuracy.png", results, tasks)
    params = results.get("fedcollm", {}).get("params") or results.get("fedavg", {}).get("params")
    plots.bytes_per_round(out / "bytes_per_round.png", curves, params)

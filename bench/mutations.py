"""Deliberate breaks: does the fast suite catch each one? (``python -m bench.mutations``)

Each entry of ``BREAKS`` is one bug a contributor could plausibly write: a text replacement in one file of
``src/``. For each, a scratch copy of the repository (the working tree, or ``--ref REV``'s tree) gets that one
replacement, and the fast suite (``pytest -x -m 'not slow'``) runs on it: the test files most likely to catch
it first, then, if they pass, the whole suite. The break is *caught* when the suite fails; *missed* when the whole suite
passes, which is a missing test. The scratch copy is imported ahead of the installed package (``PYTHONPATH``),
in this process's children and in every Flower process they start.

    python -m bench.mutations                       # every break, on the working tree
    python -m bench.mutations --ref 594afdf         # the same breaks on an older tree (a break whose code that
                                                    # tree lacks is reported as not applicable)
    python -m bench.mutations --only secagg-mask,kl-swapped --out results/tests/mutations-after.txt

The table lists each break, whether it was caught, the first failing test and the seconds it took.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("src", "tests", "bench", "configs", "pyproject.toml", "constraints.txt", "Makefile", "README.md")
SHARED = "results"  # read by a few tests (committed records): linked into each copy, not copied


@dataclass(frozen=True)
class Break:
    name: str
    path: str  # under src/fedcollm/
    old: str  # must occur exactly once
    new: str
    tests: tuple[str, ...]  # the test files run first (the whole fast suite follows)
    what: str


ZERO_MASKS = '''log = logging.getLogger(__name__)
import importlib as _il  # noqa: E402  (a break: SecAgg+'s masks are all zero on both sides; the sum stays right)
for _name in ("flwr.client.mod.secure_aggregation.secaggplus_mod",
              "flwr.server.workflow.secure_aggregation.secaggplus_workflow"):
    _il.import_module(_name).pseudo_rand_gen = lambda seed, r, dims: [np.zeros(d, dtype=np.int64) for d in dims]
'''

BREAKS = [
    Break("secagg-mask", "federation/secagg.py", "log = logging.getLogger(__name__)\n", ZERO_MASKS,
          ("tests/test_privacy.py",), "drop SecAgg+'s masks: every client's quantized update in the clear"),
    Break("unweighted-mean", "federation/privacy.py",
          "        return self.weight if self.dp.enabled else None", "        return lambda n: 1",
          ("tests/test_privacy.py", "tests/test_federation.py"), "average the client updates unweighted"),
    Break("export-lora-scaling", "models/export.py",
          "    return load_adapter_model(model, src.adapter).merge_and_unload(), tok",
          "    peft = load_adapter_model(model, src.adapter)\n"
          "    for m in peft.modules():\n"
          "        if hasattr(m, 'scaling') and isinstance(m.scaling, dict):\n"
          "            m.scaling = {k: 1.0 for k in m.scaling}\n"
          "    return peft.merge_and_unload(), tok",
          ("tests/test_export.py",), "merge W + B·A without LoRA's alpha/r scaling in the HF/GGUF export"),
    Break("seal-off", "data/schema.py", "    if os.environ.get(SEAL_ENV) and split == eval_split(task):",
          "    if False and os.environ.get(SEAL_ENV) and split == eval_split(task):",
          ("tests/test_sealed_test_split.py", "tests/test_experiment.py"), "leave the test seal off"),
    Break("packing-positions", "train.py", "        pos_ids += range(len(seq))",
          "        pos_ids += range(start, start + len(seq))", ("tests/test_lora_losses_train.py",),
          "packed sequences: positions do not restart per sequence"),
    Break("fedadam-bias-correction", "federation/server_opt.py",
          "hp.lr * math.sqrt(1 - hp.beta_2 ** (t + 1.0)) / (1 - hp.beta_1 ** (t + 1.0))", "hp.lr",
          ("tests/test_server_opt.py",), "FedAdam without its bias-corrected step size"),
    Break("kl-swapped", "losses.py", "    return (t_logp.exp() * (t_logp - s_logp)).sum(-1) * temperature**2",
          "    return (s_logp.exp() * (s_logp - t_logp)).sum(-1) * temperature**2",
          ("tests/test_lora_losses_train.py", "tests/test_updates.py"),
          "KL(student || teacher) instead of KL(p_t || p_s)"),
    Break("choice-kl-swapped", "losses.py",
          "    t = choice_log_probs(teacher.detach(), valid, temperature)\n"
          "    s = choice_log_probs(student, valid, temperature)\n",
          "    s = choice_log_probs(teacher.detach(), valid, temperature)\n"
          "    t = choice_log_probs(student, valid, temperature)\n",
          ("tests/test_choices.py",), "the choice KL as KL(q_student || q_teacher)"),
    Break("choice-kl-no-tau2", "losses.py", "    return (t.exp() * (t - s)).sum(-1) * temperature**2",
          "    return (t.exp() * (t - s)).sum(-1)", ("tests/test_choices.py",), "the choice KL without Hinton's τ²"),
    Break("choice-acc-norm-ignored", "evaluate.py",
          "    return (sums if cb.divisors is None else sums / cb.divisors.to(sums.device)), token_logp",
          "    return sums, token_logp", ("tests/test_choices.py",),
          "choice-level training ranks an acc_norm task by its raw sums"),
    Break("fewshot-unseeded", "data/lm_eval_task.py", "    task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)\n",
          "", ("tests/test_lm_eval_tasks.py",), "lm-eval's few-shot examples drawn without its evaluator's seed"),
    Break("unlabeled-to-clients", "data/partition.py", "            if blank is not None:",
          "            if False:", ("tests/test_own_data.py",),
          "unanswered questions dealt to the clients, who would train on no answer"),
    Break("nan-check", "models/lora.py", "        if not np.all(np.isfinite(v)):", "        if False:",
          ("tests/test_federation.py", "tests/test_privacy.py"), "skip the NaN/Inf check of client updates"),
    Break("resume-wrong-round", "federation/algorithm.py", "        run.load_round(done, server.llm, server.slm)",
          "        run.load_round(max(done - 1, 1), server.llm, server.slm)", ("tests/test_federation.py",),
          "resume from the round before the last finished one"),
    Break("scorer-off-by-one", "evaluate.py", "            preds = [n_ctx - 1] + list(range(start, end))",
          "            preds = [n_ctx] + list(range(start, end))", ("tests/test_scorer_vs_lm_eval.py",),
          "the scorer reads the continuation's first token one position late"),
    Break("gguf-transposed", "models/gguf_io.py",
          "            data = state.pop(key).detach().float().cpu().numpy()\n"
          "            check_f16_range(data, qtype, key)",
          "            data = state.pop(key).detach().float().cpu().numpy()\n"
          "            data = data.T.reshape(data.shape) if data.ndim == 2 else data\n"
          "            check_f16_range(data, qtype, key)", ("tests/test_export.py",),
          "a GGUF tensor written transposed"),
    Break("dp-noise-not-over-m", "federation/privacy.py",
          "        return self.dp.noise_multiplier * self.dp.clipping_norm / averaged",
          "        return self.dp.noise_multiplier * self.dp.clipping_norm", ("tests/test_privacy.py",),
          "DP noise of std z·C on the mean instead of z·C/m"),
    Break("dp-no-clip", "federation/client_app.py", "    if config is not None and CLIPPING_NORM_KEY in config:",
          "    if False:", ("tests/test_privacy.py",), "clients skip DP's clipping"),
    Break("dp-epsilon-multiplier", "federation/privacy.py", "dp_accounting.GaussianDpEvent(noise_multiplier / 2)",
          "dp_accounting.GaussianDpEvent(noise_multiplier)", ("tests/test_sampling.py",),
          "sampled ε at multiplier z, not z/2 (replace-one sensitivity 2C)"),
    Break("fedprox-factor", "losses.py", "    return 0.5 * mu * sum(", "    return mu * sum(",
          ("tests/test_server_opt.py",), "FedProx's term without its ½"),
    Break("bf16-truncates", "federation/wire.py", "    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(\"<u2\")",
          "    return (u >> 16).astype(\"<u2\")", ("tests/test_federation.py",),
          "bf16 transfer truncates instead of rounding to nearest even"),
    Break("arrival-order-mean", "federation/strategy.py",
          "        return super().aggregate_train(server_round, [*canonical_order(accepted), *errors])",
          "        return super().aggregate_train(server_round, [*accepted, *errors])", ("tests/test_federation.py",),
          "FedAvg in arrival order: a resumed run no longer repeats the uninterrupted one"),
    Break("outlier-gate-mean", "federation/strategy.py",
          "        median = float(np.median(list(self.norms.values()))) if len(self.norms) >= 3 else None",
          "        median = float(np.mean(list(self.norms.values()))) if len(self.norms) >= 3 else None",
          ("tests/test_federation.py", "tests/test_server_opt.py"),
          "the outlier gate against the mean, not the median"),
    Break("cache-key-no-seed", "federation/update_cache.py", '"seed": seed,', '',
          ("tests/test_federation.py", "tests/test_updates.py"),
          "the update cache's key without the update's seed"),
    Break("cache-key-device", "federation/update_cache.py", '"device": str(device(cfg))', '"device": cfg.device',
          ("tests/test_updates.py",), "the cache key holds the unresolved device (auto)"),
    Break("sample-global-rng", "federation/transport.py",
          "    return sorted(random.Random(seed).sample(sorted(online), n))",
          "    return sorted(random.sample(sorted(online), n))", ("tests/test_sampling.py",),
          "clients sampled by the global RNG, not per (seed, round)"),
    Break("min-clients-ignored", "federation/algorithm.py",
          "    if up.theta is None or up.accepted < min_clients(cfg):", "    if up.theta is None:",
          ("tests/test_privacy.py",), "a round goes on below federation.min_clients"),
    Break("zero-shot-overwritten", "federation/algorithm.py", "    if run.metrics():\n        return\n", "",
          ("tests/test_federation.py",), "a resumed run logs the zero-shot round again"),
    Break("no-kd-keeps-llm-weight", "recipes/experiment.py",
          '    c.kd.weight, c.kd.llm_weight, c.kd.slm_weight, c.kd.select = 0.0, 0.0, 0.0, "none"',
          '    c.kd.weight, c.kd.slm_weight, c.kd.select = 0.0, 0.0, "none"', ("tests/test_no_kd.py",),
          "no_kd keeps the config's LLM ← SLM weight"),
    Break("tokenizer-check-off", "models/sources.py", "    if tok_a.get_vocab() != tok_b.get_vocab():",
          "    if False:", ("tests/test_cli.py",), "an LLM/SLM pair with different tokenizers is accepted"),
    Break("config-temperature-zero", "config.py",
          '        require(self.temperature > 0, f"{prefix}temperature must be > 0")',
          '        require(self.temperature >= 0, f"{prefix}temperature must be > 0")',
          ("tests/test_properties.py", "tests/test_config.py"), "kd.temperature = 0 accepted (a softmax over 0)"),
    Break("no-parent-death-signal", "federation/deploy.py",
          "            _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGTERM))", "            pass",
          ("tests/test_federation.py",), "Flower's processes do not die with a SIGKILLed launcher"),
    Break("launcher-watch-off", "federation/server_app.py", "        end_with(int(rc[\"launcher-pid\"]))",
          "        pass", ("tests/test_federation.py",), "the ServerApp trains on after its launcher is gone"),
    Break("payload-no-children", "federation/wire.py",
          "    return len(obj.deflate()) + sum(_object_bytes(child) for child in (obj.children or {}).values())",
          "    return len(obj.deflate())", ("tests/test_federation.py",), "bytes on the wire without the arrays"),
    Break("metered-no-received", "federation/transport.py",
          "                self.received[node] += payload_bytes(r.content)", "                pass",
          ("tests/test_federation.py", "tests/test_tracking.py"), "the bytes clients send are not counted"),
    Break("full-disk-is-input", "cli.py", '    return EXIT_CODES["system"]  # an OSError',
          '    return EXIT_CODES["input"]  # an OSError',
          ("tests/test_cli.py",), "a full disk exits 2, as the user's mistake"),
    Break("checkpoint-not-atomic", "runlog.py",
          '        (tmp / "DONE").write_text(time.strftime("%Y-%m-%dT%H:%M:%S\\n"))',
          '        (tmp / "DONE").write_text(time.strftime("%Y-%m-%dT%H:%M:%S\\n"))\n'
          '        tmp.rename(tmp.with_name(tmp.name + ".x"))',
          ("tests/test_federation.py",), "a round's checkpoint never lands under its final name"),
]


def scratch_copy(dest: Path, ref: str | Path | None, shared: Path) -> None:
    """The repository's files the suite needs: the working tree's (or a snapshot folder's), or ``ref``'s (``git
    archive``); ``results/`` (only read) as a link to ``shared``."""
    if ref is None or isinstance(ref, Path):
        for name in COPIED:
            src = (ref or ROOT) / name
            if src.is_dir():
                shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            elif src.exists():
                shutil.copy2(src, dest / name)
    else:
        present = [n for n in COPIED if subprocess.run(["git", "cat-file", "-e", f"{ref}:{n}"], cwd=ROOT,
                                                       capture_output=True).returncode == 0]
        archive = subprocess.run(["git", "archive", ref, *present], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    (dest / SHARED).symlink_to(shared, target_is_directory=True)


def shared_results(ref: str | None, where: Path) -> Path:
    """``results/`` of the working tree, or ``ref``'s extracted once into ``where``."""
    if ref is None:
        return ROOT / SHARED
    archive = subprocess.run(["git", "archive", ref, SHARED], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where / SHARED


def apply(dest: Path, brk: Break) -> bool:
    """The break applied in ``dest``; False where that tree lacks the code it breaks."""
    path = dest / "src" / "fedcollm" / brk.path
    if not path.exists():
        return False
    text = path.read_text()
    if text.count(brk.old) != 1:
        return False
    path.write_text(text.replace(brk.old, brk.new))
    return True


def first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" ", 1)[1].split(" - ")[0]
    return ""


def run_one(brk: Break | None, ref: str | Path | None, timeout: float, shared: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="fedcollm-mutant-") as tmp:
        dest = Path(tmp)
        scratch_copy(dest, ref, shared)
        if brk is not None and not apply(dest, brk):
            return {"status": "n/a", "test": "", "seconds": 0.0}
        first = [t for t in (brk.tests if brk else ()) if (dest / t).exists()]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(dest / "src"), str(dest)]),
               "PYTHONDONTWRITEBYTECODE": "1"}
        base = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow"]
        t0 = time.perf_counter()
        # the likeliest test files first (pytest runs a folder in its own order, whatever else is named), then
        # the whole suite for a break they miss
        for targets in ([first] if first else []) + [["tests"]]:
            try:
                done = subprocess.run([*base, *targets], cwd=dest, env=env, capture_output=True, text=True,
                                      timeout=max(1.0, timeout - (time.perf_counter() - t0)))
            except subprocess.TimeoutExpired:
                return {"status": "timeout", "test": "", "seconds": time.perf_counter() - t0}
            if done.returncode != 0:
                break
        seconds = time.perf_counter() - t0
        if done.returncode == 0:
            return {"status": "missed" if brk else "clean", "test": "", "seconds": seconds}
        if done.returncode == 1:
            return {"status": "caught" if brk else "FAILS UNBROKEN", "test": first_failure(done.stdout),
                    "seconds": seconds}
        return {"status": f"error {done.returncode}", "test": done.stdout[-300:].replace("\n", " "),
                "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", default=None, help="a git revision whose tree to break (default: the working tree)")
    p.add_argument("--only", default=None, help="comma-separated break names")
    p.add_argument("--list", action="store_true", help="list the breaks and whether each applies, then stop")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds one suite run may take")
    p.add_argument("--out", default=None, help="also write the table here")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows --out already holds for the same tree (a killed pass goes on where it stopped)")
    p.add_argument("--no-clean", action="store_true",
                   help="skip the unbroken tree's run (where a fresh-clone run of the same tree is on record)")
    args = p.parse_args(argv)
    if args.resume and not args.out:
        p.error("--resume needs --out")
    breaks = [b for b in BREAKS if args.only is None or b.name in args.only.split(",")]
    keep = tempfile.TemporaryDirectory(prefix="fedcollm-mutant-results-")
    shared = shared_results(args.ref, Path(keep.name))
    source: str | Path | None = args.ref
    if args.ref is None:  # the working tree as it is now: edits made while the breaks run do not leak in
        source = Path(keep.name) / "snapshot"
        source.mkdir()
        scratch_copy(source, None, shared)
    if args.list:
        with tempfile.TemporaryDirectory() as tmp:
            scratch_copy(Path(tmp), args.ref, shared)
            for b in breaks:
                print(f"{b.name:28} {'applies' if apply(Path(tmp), b) else 'n/a':8} {b.what}")
        return 0
    rev = args.ref or "the working tree"
    head = subprocess.run(["git", "rev-parse", "--short", args.ref or "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:  # what the suite runs on: src, tests, bench (not results/)
        scratch_copy(Path(tmp), source, shared)
        digest = tree_digest(Path(tmp))
    lines = [f"# python -m bench.mutations{' --ref ' + args.ref if args.ref else ''}"
             f"{' --only ' + args.only if args.only else ''}: {len(breaks)} breaks on {rev} ({head}"
             f"{', with uncommitted changes' if args.ref is None and _dirty() else ''}; code {digest})",
             "| break | what it breaks | outcome | first failing test | s |", "|---|---|---|---|---|"]
    done = _finished_rows(Path(args.out), digest) if args.resume else {}
    print("\n".join(lines), flush=True)
    if args.no_clean:
        lines.append("| (none) | the tree as it is | not run here (--no-clean) | | |")
    elif "(none)" in done:
        lines.append(done["(none)"])
    else:  # the unbroken copy must pass, or no outcome below means much
        clean = run_one(None, source, args.timeout, shared)
        lines.append(f"| (none) | the tree as it is | {clean['status']} | {clean['test']} | {clean['seconds']:.0f} |")
    print(lines[-1], flush=True)
    for b in breaks:
        if b.name in done:
            line = done[b.name]
        else:
            r = run_one(b, source, args.timeout, shared)
            line = f"| {b.name} | {b.what} | {r['status']} | {r['test']} | {r['seconds']:.0f} |"
        lines.append(line)
        print(line, flush=True)
        if args.out:
            Path(args.out).write_text("\n".join(lines) + "\n")
    caught = sum(" | caught | " in line for line in lines)
    missed = sum(" | missed | " in line for line in lines)
    lines.append(f"\n{caught} caught, {missed} missed, {len(breaks) - caught - missed} other of {len(breaks)}")
    print(lines[-1])
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 1 if missed else 0


def tree_digest(root: Path) -> str:
    """A digest of the code a pass breaks and tests (src/, tests/, bench/): the same code, the same digest, whatever
    the commit (a commit of results alone does not change it, so a killed pass resumes across it)."""
    h = hashlib.sha256()
    for part in ("src", "tests", "bench"):
        for f in sorted((root / part).rglob("*.py")):
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _finished_rows(out: Path, digest: str) -> dict[str, str]:
    """The rows of an earlier pass over the same code, by break name; a timeout or an error is run again."""
    if not out.exists():
        return {}
    text = out.read_text().splitlines()
    if not text or f"code {digest})" not in text[0]:
        raise SystemExit(f"{out}: written for other code than this tree's ({digest}); move it away or drop --resume")
    rows = {}
    for line in text[3:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[2] in ("caught", "missed", "n/a", "clean"):
            rows[cells[0]] = line
    return rows


def _dirty() -> bool:
    return bool(subprocess.run(["git", "status", "--porcelain", "src", "tests"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip())


if __name__ == "__main__":
    sys.exit(main())

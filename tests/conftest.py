"""Shared fixtures. `make_worker` runs a test against every transport a worker can have."""

from __future__ import annotations

import ctypes
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tether as sy
from tether.node import Node
from tether.transports.websocket import ServerThread, WorkerServer

TOKEN = "test-token"
TRANSPORTS = ["virtual", "virtual-direct", "websocket"]
# The logs of worker processes the tests start; removed when the run ends.
LOGS = Path(tempfile.mkdtemp(prefix="tether-test-logs-"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(LOGS, ignore_errors=True)


def _network_worker(name: str, servers: list) -> sy.Worker:
    """A worker server on 127.0.0.1 and a client connected to it. The test may play the
    owner through `worker.node` (the server's Node), as it can with a VirtualWorker."""
    node = Node(name)
    server = ServerThread(WorkerServer(node, port=0)).start()
    servers.append(server)
    worker = server.connect(id=name)
    worker.node = node
    worker.publish = node.publish
    return worker


@pytest.fixture(params=TRANSPORTS)
def make_worker(request: pytest.FixtureRequest) -> Iterator[Callable[[str], sy.Worker]]:
    """A factory of workers over one transport: `virtual` (in process, through the codec),
    `virtual-direct` (codec skipped), `websocket` (a real server on 127.0.0.1)."""
    made: list[sy.Worker] = []
    servers: list[ServerThread] = []

    def make(name: str = "bob") -> sy.Worker:
        if request.param == "websocket":
            worker = _network_worker(name, servers)
        else:
            worker = sy.VirtualWorker(id=name, serialize=request.param == "virtual")
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.close()
    for server in servers:
        server.stop()


def store_of(worker: sy.Worker):
    """The worker-side store of this client's objects, after everything queued has run."""
    worker.flush()
    [client] = worker.node.clients
    return worker.node.store(client)


def _die_with_parent() -> None:
    """A worker started by a test ends when the test run does, even a killed one."""
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class WorkerProcess:
    """`tether worker ...` in a child process, as a user starts it."""

    def __init__(self, *args: str, port: int = 0, token: str = TOKEN) -> None:
        self.args = args
        self.token = token
        self.log = Path(tempfile.mkstemp(prefix="worker-", suffix=".log", dir=LOGS)[1])
        self.lines: list[str] = []
        self.port = port
        self._start()

    def _start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "tether.cli",
            "worker",
            "--port",
            str(self.port),
            "--token",
            self.token,
            *self.args,
        ]
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            text=True,
            stderr=self.log.open("a"),
            preexec_fn=_die_with_parent,
        )
        watchdog = threading.Timer(60, self.proc.kill)  # a worker that never starts fails the test
        watchdog.start()
        try:
            for line in self.proc.stdout:  # type: ignore[union-attr]
                self.lines.append(line.rstrip("\n"))
                if " listening on " in line:
                    self.port = int(line.rsplit(":", 1)[1])
                    return
        finally:
            watchdog.cancel()
        raise RuntimeError(f"worker exited: {self.log.read_text()}")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def connect(self, **options) -> sy.WebsocketClientWorker:
        return sy.connect(self.url, token=self.token, **options)

    def rss_kb(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(
            next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]
        )

    def restart(self) -> None:
        self.stop(signal.SIGKILL)
        self._start()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(30)


@pytest.fixture
def bob(make_worker):
    return make_worker("bob")


@pytest.fixture
def alice(make_worker):
    return make_worker("alice")

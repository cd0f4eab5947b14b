"""Shared fixtures. `make_worker` runs a test against every transport a worker can have."""

from __future__ import annotations

import concurrent.futures.thread
import ctypes
import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import tether as sy
from tether.node import Node
from tether.transports.websocket import ServerThread, WorkerServer

TOKEN = "test-token"
TRANSPORTS = ["virtual", "virtual-direct", "websocket"]
# The logs of worker processes the tests start; removed when the run ends.
LOGS = Path(tempfile.mkdtemp(prefix="tether-test-logs-"))


_EXIT_STATUS = [0]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(LOGS, ignore_errors=True)
    _EXIT_STATUS[0] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """The run never waits forever at exit: threads that a failed (timed-out) test left
    waiting would hold the interpreter up; give them a moment, then exit without them."""
    deadline = time.monotonic() + 10
    stuck = _stuck_threads()
    while stuck and time.monotonic() < deadline:
        stuck[0].join(0.1)
        stuck = _stuck_threads()
    if stuck:
        names = ", ".join(sorted(t.name for t in stuck))
        print(f"\ntests left threads running: {names}; exiting without them", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[0] or 1)


# ---- no test waits forever, nor leaves a thread behind -----------------------------------------

THREAD_GRACE = 5.0  # seconds a test's threads get to end after it


def _keeps_the_run_alive(thread: threading.Thread) -> bool:
    """Whether the interpreter waits for this thread before it exits: a non-daemon thread, or
    a thread pool's worker (concurrent.futures joins those at exit, daemon or not: a server's
    per-client thread, say, still running a command)."""
    return not thread.daemon or thread in getattr(concurrent.futures.thread, "_threads_queues", {})


def _stuck_threads() -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and t.is_alive() and _keeps_the_run_alive(t)
    ]


@pytest.fixture(autouse=True)
def no_thread_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a new thread alive that keeps the test run from exiting once
    every test has passed. (Torn down after the test's other fixtures, so the servers they
    stop have ended their threads by then.)"""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + THREAD_GRACE
    while True:
        left = [t for t in threading.enumerate() if t not in before and _keeps_the_run_alive(t)]
        if not left or time.monotonic() >= deadline:
            break
        left[0].join(max(0.0, min(0.1, deadline - time.monotonic())))
    if left:
        names = ", ".join(sorted(t.name for t in left))
        pytest.fail(
            f"{request.node.nodeid} left {len(left)} thread(s) that the run would wait for at "
            f"exit, still running {THREAD_GRACE:g} s after it ended: {names}. A thread a test "
            "starts must end (join it with a timeout) or be a daemon; a server's client "
            "thread ends when the command it runs does.",
            pytrace=False,
        )


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for the test (restored after). SMPC's many elementwise ops on
    tensors of 50,000 elements each wait for a second thread that the shared 2-core VM has
    descheduled: 34 s against 4-8 s for Part 12 bis here (benchmarks/bench_smpc.py does the
    same for both of its sides)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll `condition` until it returns something true (returned); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() >= deadline:
            pytest.fail(f"waited {timeout:g} s for {what or condition}", pytrace=False)
        time.sleep(0.001)
    return result


def join(thread: threading.Thread, timeout: float = 30.0) -> None:
    """Join a thread the test started, failing (not hanging) if it does not end in time."""
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"thread {thread.name} still runs after {timeout:g} s", pytrace=False)


# ---- leak detection: private values, compared as values -------------------------------------

# A number as Python, torch or a format spec writes it: 3, -2.5, 2.7183e+05, .5, 1e-3; not the
# digits inside a word such as a hex id.
_NUMBER = re.compile(r"(?<!\w)[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?!\w)")


def private_values(secret: torch.Tensor) -> torch.Tensor:
    """The private tensor's entries, and the sum and mean of it (and of each row and each
    column of a matrix): what a leak of the tensor, or of one statistic of it, would carry."""
    s = secret.detach().double()
    stats = [s.flatten(), s.sum().view(1), s.mean().view(1)]
    if s.dim() == 2:
        stats += [s.sum(0), s.mean(0), s.sum(1), s.mean(1)]
    return torch.cat(stats)


def numbers_in(value: Any) -> list[float]:
    """Every number in `value`: tensors' elements, numbers, the numbers written in text, in
    containers, wire messages (Done, Value, Failure) and exceptions, however nested."""
    found: list[float] = []

    def walk(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            found.extend(v.detach().double().flatten().tolist())
        elif isinstance(v, bool) or v is None:
            return
        elif isinstance(v, int | float):
            found.append(float(v))
        elif isinstance(v, str):
            found.extend(float(n) for n in _NUMBER.findall(v))
        elif isinstance(v, bytes | bytearray | memoryview):
            walk(bytes(v).decode("latin-1"))
        elif isinstance(v, dict):
            for key, item in v.items():
                walk(key)
                walk(item)
        elif isinstance(v, list | tuple | set | frozenset):
            for item in v:
                walk(item)
        elif isinstance(v, BaseException):
            walk(str(v))
            walk(list(v.args))
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            for f in dataclasses.fields(v):
                walk(getattr(v, f.name))
        else:
            walk(str(v))

    walk(value)
    return found


def leaked(value: Any, private: torch.Tensor, rtol: float = 5e-4) -> list[float]:
    """The numbers in `value` that equal one of the `private` values (to `rtol`, the
    precision of a printed tensor): empty where nothing private is there."""
    numbers = torch.tensor(numbers_in(value), dtype=torch.float64)
    if not len(numbers):
        return []
    close = (numbers[:, None] - private[None, :]).abs() <= rtol * private.abs()[None, :]
    return numbers[close.any(dim=1)].tolist()


class Replies:
    """Records every reply a client receives from its worker (each frame's list of messages),
    so a test can check all that came back, not only what its calls returned."""

    def __init__(self, client: Any) -> None:
        self.received: list[list] = []
        transport = client.transport
        exchange = transport.exchange

        def recording(commands: list, adopted: frozenset[int] = frozenset()):
            wait = exchange(commands, adopted)

            def waited() -> list:
                replies = wait()
                self.received.append(list(replies))
                return replies

            return waited

        transport.exchange = recording


def _network_worker(name: str, servers: list) -> sy.Worker:
    """A worker server on 127.0.0.1 and a client connected to it. The test may play the
    owner through `worker.node` (the server's Node), as it can with a VirtualWorker. Its
    release policy is a VirtualWorker's, "open", so that the transports compare alike."""
    node = Node(name, release="open")
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

    def __init__(self, *args: str, port: int = 0, token: str = TOKEN, wait: bool = True) -> None:
        self.args = args
        self.token = token
        self.log = Path(tempfile.mkstemp(prefix="worker-", suffix=".log", dir=LOGS)[1])
        self.lines: list[str] = []
        self.port = port
        self._launch()
        if wait:
            self._wait()

    @classmethod
    def many(cls, commands: list[tuple[str, ...]], at_once: int = 4) -> list[WorkerProcess]:
        """Several workers, `at_once` starting together (each spends seconds of CPU importing
        torch: more at once gain nothing on two cores, and on a busy machine would keep each
        from starting within its minute). Started from this thread: a worker dies with the
        thread that started it (PR_SET_PDEATHSIG)."""
        started: list[WorkerProcess] = []
        for begin in range(0, len(commands), at_once):
            batch = [cls(*args, wait=False) for args in commands[begin : begin + at_once]]
            for worker in batch:
                worker._wait()
            started += batch
        return started

    def _start(self) -> None:
        self._launch()
        self._wait()

    def _launch(self) -> None:
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

    def _wait(self) -> None:
        """Until the worker says where it listens (killed if it has not within a minute)."""
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


def raw_socket(port: int, token: str = TOKEN) -> socket.socket:
    """A websocket connection on a bare socket, for sending what no library would."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed during the handshake: {response!r}"
        response += chunk
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock

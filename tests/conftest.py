"""Shared fixtures. `make_worker` runs a test against every transport a worker can have."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tether as sy
from tether.net import ServerThread, WorkerServer
from tether.node import Node

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-sample"
TRANSPORTS = ["virtual", "virtual-direct", "websocket"]


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


@pytest.fixture
def bob(make_worker):
    return make_worker("bob")


@pytest.fixture
def alice(make_worker):
    return make_worker("alice")

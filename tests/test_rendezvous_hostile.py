"""A stranger against `tether network` (a real service process started here) and a real Duet
owner: knowing the room (the public half of a session id) opens nothing. Each test sends what a
stranger could send from its own loopback address (127.0.0.N, so that the service's count of
failed lines per address is the test's own), checks that the attack fails, and then has the real
owner and scientist meet through the same service and compute."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import torch
from conftest import join, wait_until

import tether as sy
from tether import errors
from tether.duet import node as duet_node
from tether.duet.names import HELLO
from tether.duet.rendezvous import MAX_FAILED_LINES, MAX_PENDING_RELAYS, relay_key, verifier
from tether.duet.session import SessionId, await_scientist, start_duet
from tether.remote.client import Client
from tether.transports.websocket import WebsocketTransport
from tether.wire import Call

NO_ROOM = b"ERROR no duet with this session id is registered here\n"
CURT = re.compile(rb"too many failed requests from 127\.0\.0\.\d+ in the last minute")


class NetworkService:
    """`python -m tether.cli network --port 0`, its output lines collected as they come."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tether.cli", "network", "--port", "0", "--quiet"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        found = wait_until(
            lambda: next(filter(None, (re.search(r"on (ws://\S+)", x) for x in self.lines)), 0),
            30,
            "tether network to listen",
        )
        self.url = found.group(1)
        self.port = int(self.url.rsplit(":", 1)[1])

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        join(self._reader, 10)


@pytest.fixture(scope="module")
def service() -> Iterator[NetworkService]:
    running = NetworkService()
    yield running
    running.stop()


@pytest.fixture
def owner(service: NetworkService) -> Iterator[sy.duet.OwnerDuet]:
    """A real Duet owner registered with the service, letting the first scientist in."""
    duet = start_duet(service.url, confirm=False)
    yield duet
    duet.close()


_addresses = iter(range(10, 250))


@pytest.fixture
def stranger() -> str:
    """A loopback address of the test's own: its failed lines are counted apart."""
    return f"127.0.0.{next(_addresses)}"


def connect(service: NetworkService, source: str, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", service.port), timeout, (source, 0))


def ask(service: NetworkService, source: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data` on a fresh connection from `source`; everything answered until it closes."""
    with connect(service, source, timeout) as sock:
        sock.sendall(data)
        return _read_to_end(sock)


def _read_to_end(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def assert_the_pair_still_computes(
    service: NetworkService, owner: sy.duet.OwnerDuet, relay: bool | None = None
) -> None:
    """The real scientist joins the real owner through the service and computes."""
    with sy.join_duet(owner.session_id, service.url, relay=relay, timeout=10) as duet:
        assert torch.equal((torch.ones(2).send(duet) + 1).get(), torch.full((2,), 2.0))
    assert owner.client_id is not None


def room_of(owner: sy.duet.OwnerDuet) -> str:
    return SessionId.parse(owner.session_id).room


def test_the_relay_key_is_the_hkdf_the_protocol_states():
    """The bytes in rendezvous.py's docstring, computed here by RFC 5869 with hmac alone, so
    that another client can be written from the docstring."""
    room, secret = "abcdefghijklmnop", "qrstuvwxyz234567" * 2
    prk = hmac.new(bytes(32), secret.encode(), hashlib.sha256).digest()  # no salt: 32 zeros
    okm = hmac.new(prk, b"tether-relay " + room.encode() + b"\x01", hashlib.sha256).digest()
    assert relay_key(room, secret) == okm.hex()
    assert verifier(okm.hex()) == hashlib.sha256(okm).hexdigest()
    assert relay_key(room, secret[::-1]) != okm.hex()


# ---- lookups and relays knowing only the room -------------------------------------------------


def test_300_lookups_without_the_relay_key_are_refused_and_the_scientist_joins(
    service, owner, stranger
):
    room = room_of(owner)
    attempts = [
        f"LOOKUP {room}\n",  # the protocol before relay keys
        f"LOOKUP {room} {secrets.token_hex(32)}\n",  # a guessed key
        f"LOOKUP {room} {verifier(secrets.token_hex(32))}\n",
        f"LOOKUP {room} {room}\n",
    ]
    answers = [ask(service, stranger, attempts[i % 4].encode()) for i in range(300)]
    assert all(a == NO_ROOM for a in answers[:MAX_FAILED_LINES]), set(answers)
    assert all(CURT.search(a) for a in answers[MAX_FAILED_LINES:]), set(answers)
    # a wrong key on the owner's room is answered as a room that does not exist: no oracle
    unknown_room = f"LOOKUP {'b' * 16} {secrets.token_hex(32)}\n".encode()
    assert ask(service, "127.0.0.1", unknown_room) == NO_ROOM
    assert_the_pair_still_computes(service, owner)


def test_300_relay_handshakes_knowing_only_the_room_lock_nobody_out(service, owner, stranger):
    """The issue's attack: before relay keys, 300 `GET /relay/<room>` lines held open made the
    owner open 300 handshakes to its own worker, which then turned the real scientist away."""
    room = room_of(owner)
    held = []
    try:
        for i in range(300):
            sock = connect(service, stranger)
            key = "" if i % 2 else f"/{secrets.token_hex(32)}"
            sock.sendall(f"GET /relay/{room}{key} HTTP/1.1\r\nHost: x\r\n".encode())
            held.append(sock)  # never finishing the handshake
        answers = [_read_to_end(sock) for sock in held]
        assert all(a.startswith(b"HTTP/1.1 404 ") for a in answers[:MAX_FAILED_LINES])
        assert all(a.startswith(b"HTTP/1.1 429 ") for a in answers[MAX_FAILED_LINES:])
        # while all 300 sockets are still open, the scientist joins through the relay
        assert_the_pair_still_computes(service, owner, relay=True)
    finally:
        for sock in held:
            sock.close()


# ---- rooms and relay slots --------------------------------------------------------------------


class FakeOwner:
    """An owner speaking the protocol by hand: registers a room and never attaches, so the
    relays the service asks it for stay pending (and can be counted)."""

    def __init__(self, service: NetworkService, session: SessionId) -> None:
        self.key = relay_key(session.room, session.secret)
        self.sock = connect(service, "127.0.0.1")
        self.sock.sendall(f"REGISTER {session.room} 127.0.0.1 9 {verifier(self.key)}\n".encode())
        assert self.sock.recv(100) == b"OK\n"

    def relays_asked(self, wait: float) -> list[bytes]:
        """The lines the service sent within `wait` seconds."""
        said, deadline = b"", time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                said += self.sock.recv(65536)
            except TimeoutError:
                break
        return said.splitlines(keepends=True)

    def close(self) -> None:
        self.sock.close()


def test_relays_with_a_wrong_key_are_refused_and_take_no_slot(service, owner, stranger):
    session = SessionId.new()
    fake = FakeOwner(service, session)
    pending = []
    try:
        wrong = [
            f"/relay/{session.room}",
            f"/relay/{session.room}/{secrets.token_hex(32)}",
            f"/relay/{session.room}/{verifier(fake.key)}",  # the verifier is not the key
            f"/relay/{session.room}/{fake.key.upper()}",
            f"/relay/{session.room}/{fake.key}/x",
        ]
        for i in range(20):
            answer = ask(service, stranger, f"GET {wrong[i % 5]} HTTP/1.1\r\n\r\n".encode())
            assert answer.startswith(b"HTTP/1.1 404 Not Found"), answer
        assert fake.relays_asked(0.5) == []  # the owner was never asked to open a relay
        # the room's slots are all there for the parties who hold the key, and no more
        for _ in range(MAX_PENDING_RELAYS):
            pending.append(connect(service, stranger))
            pending[-1].sendall(f"GET /relay/{session.room}/{fake.key} HTTP/1.1\r\n".encode())
        asked = fake.relays_asked(1.0)
        assert len(asked) == MAX_PENDING_RELAYS
        assert all(re.fullmatch(rb"RELAY [0-9a-f]{32}\n", line) for line in asked)
        answer = ask(
            service, stranger, f"GET /relay/{session.room}/{fake.key} HTTP/1.1\r\n".encode()
        )
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        # a stranger who guesses a nonce attaches nothing
        nonce = secrets.token_hex(16)
        assert ask(service, stranger, f"ATTACH {session.room} {nonce}\n".encode()).startswith(
            b"ERROR no relay is waiting"
        )
    finally:
        fake.close()  # the room closes: its pending relays are answered at once
        for sock in pending:
            assert _read_to_end(sock).startswith(b"HTTP/1.1 504 ")
            sock.close()
    assert_the_pair_still_computes(service, owner, relay=True)


def test_a_stranger_cannot_take_a_room_or_capture_its_scientist(service, owner, stranger):
    room = room_of(owner)
    for taken in (
        f"REGISTER {room} 127.0.0.1 9 {verifier(secrets.token_hex(32))}\n",
        f"REGISTER {room} 127.0.0.1 9\n",  # the protocol before relay keys
    ):
        assert ask(service, stranger, taken.encode()).startswith(b"ERROR "), taken
    assert_the_pair_still_computes(service, owner)  # still the owner's room
    # a room registered by someone without the session's secret is no room for its scientist
    session = SessionId.new()
    squatter = connect(service, stranger)
    squatter.sendall(f"REGISTER {session.room} 127.0.0.1 9 {'0' * 64}\n".encode())
    assert squatter.recv(100) == b"OK\n"
    try:
        for relay in (None, True):
            with pytest.raises(errors.ConnectionLostError, match=r"no duet with this session|404"):
                sy.join_duet(str(session), service.url, relay=relay, timeout=5)
    finally:
        squatter.close()


# ---- the per-address cap, and lines that are no request ---------------------------------------


def test_past_the_failure_cap_an_address_is_answered_curtly_but_its_valid_keys_pass(
    service, owner, stranger
):
    room = room_of(owner)
    bad = f"LOOKUP {room} {secrets.token_hex(32)}\n".encode()
    for _ in range(MAX_FAILED_LINES):
        assert ask(service, stranger, bad) == NO_ROOM
    assert CURT.search(ask(service, stranger, bad))
    wait_until(lambda: any("failed lines within a minute" in x for x in service.lines), 5)
    # it gets a second, not ten, to send a line
    started = time.monotonic()
    assert CURT.search(ask(service, stranger, b""))
    assert time.monotonic() - started < 3
    # the key still opens the room from the capped address: a stranger behind the scientist's
    # address (a NAT) cannot lock the scientist out
    key = relay_key(room, SessionId.parse(owner.session_id).secret)
    direct = ask(service, stranger, f"LOOKUP {room} {key}\n".encode())
    assert direct == f"OWNER ws://127.0.0.1:{owner.server.server.port}\n".encode()
    # another address is answered in full
    assert ask(service, "127.0.0.1", bad) == NO_ROOM
    assert_the_pair_still_computes(service, owner, relay=True)


def test_oversized_and_garbage_lines_are_refused_at_once(service, owner, stranger):
    garbage = [
        b"x" * 4096,  # no newline: refused at 1 KiB, not waited on
        b"LOOKUP " + b"a" * 5000 + b"\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\n",  # TLS hello
        b"\x00\xff\xfe\n",
        b"   \n",
        b"\n",
        b"PING\n",
        b"REGISTER\n",
        b"REGISTER ROOM! 127.0.0.1 port\n",
        b"LOOKUP\n",
        b"ATTACH\n",
    ]
    for data in garbage:
        started = time.monotonic()
        answer = ask(service, stranger, data)
        assert answer.startswith(b"ERROR ") and answer.endswith(b"\n"), (data[:20], answer)
        assert time.monotonic() - started < 3, data[:20]
    for request in (b"GET / HTTP/1.1\r\n", b"GET /relay/../../etc/passwd HTTP/1.1\r\n", b"GET\n"):
        answer = ask(service, stranger, request)
        assert answer.startswith((b"HTTP/1.1 404 ", b"HTTP/1.1 429 ")), (request, answer)
    assert service.proc.poll() is None
    assert_the_pair_still_computes(service, owner)


# ---- the owner's waiting room -----------------------------------------------------------------


def test_fifty_hellos_keep_at_most_eight_waiting_and_the_scientist_is_confirmed(
    service, monkeypatch
):
    """Fifty connections holding the session id (it leaked) say hello with random client ids:
    at most MAX_WAITING wait for the owner, newer hellos taking older ones' places, and the real
    scientist, who joins after them, is still the one the owner confirms and serves."""
    owner = start_duet(service.url, confirm=True)
    secret = SessionId.parse(owner.session_id).secret
    refused: list[str] = []
    strangers: list[Client] = []

    def say_hello(client: Client, client_id: str) -> None:
        client.submit(Call(HELLO, [client_id, 60.0], {}, None))
        try:
            client.flush()
        except errors.TetherError as exc:  # displaced, or (at the end) the duet ended
            refused.append(str(exc))

    stranger_ids = [secrets.token_hex(8) for _ in range(50)]
    hellos = []
    try:
        for client_id in stranger_ids:
            strangers.append(Client(None, WebsocketTransport(owner.server.url, secret)))
            hellos.append(threading.Thread(target=say_hello, args=(strangers[-1], client_id)))
            hellos[-1].start()
        wait_until(lambda: len(refused) == 50 - duet_node.MAX_WAITING, 20, "42 displaced")
        assert all("newer scientists said hello" in text for text in refused)
        waiting = owner.node.waiting
        assert len(waiting) == duet_node.MAX_WAITING and set(waiting) <= set(stranger_ids)

        prompts: list[str] = []

        def the_scientists_id(prompt: str = "") -> str:
            """What the owner types: the id the scientist sent them (once it has arrived)."""
            prompts.append(prompt)
            deadline = time.monotonic() + 20
            while not (theirs := set(owner.node.waiting) - set(stranger_ids)):
                assert time.monotonic() < deadline, "the scientist never said hello"
                time.sleep(0.01)
            return theirs.pop()

        monkeypatch.setattr("builtins.input", the_scientists_id)
        confirming = threading.Thread(target=await_scientist, args=(owner, True, 20))
        confirming.start()
        with sy.join_duet(owner.session_id, service.url, timeout=20) as duet:
            join(confirming, 20)
            assert prompts == [
                f"tether duet: {duet_node.MAX_WAITING} scientists are waiting; "
                "enter your scientist's client id: "
            ]
            assert owner.client_id == duet.client_id
            assert torch.equal((torch.ones(2).send(duet) + 1).get(), torch.full((2,), 2.0))
            assert len(owner.node.waiting) == duet_node.MAX_WAITING - 1
    finally:
        owner.close()  # the strangers still waiting are told at once
        for thread in hellos:
            join(thread, 20)
        for client in strangers:
            client.close()
    assert len(refused) == 50  # every stranger was refused: the scientist displaced one more
    assert sum("newer scientists said hello" in text for text in refused) == 43

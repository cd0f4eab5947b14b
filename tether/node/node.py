"""The Node: the one place where remote commands run.

A node takes a frame, decodes it, checks each command against the allowlist and the policies
of the objects it names, runs it on the sending client's store and answers with one reply per
command. Nothing a peer sends can make it raise: every failure becomes a `Failure` reply.

One entry point, `Node.run`. The rules it applies (what may leave, what is tainted) are in
`tether.node.policy`; the server's event-loop fast path is `tether.node.quick`. Long because
it is the whole execution path (decode, admit, resolve, check, run, store, release, request),
kept readable in one file: the one place where remote code runs.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import weakref
from dataclasses import dataclass, field, replace
from typing import Any, cast

import torch

from tether.errors import LimitError, NotAllowedError, WireError
from tether.node.guard import Guard
from tether.node.policy import (
    DERIVED,
    OPEN,
    OWNER_FACTS,
    PRIVATE,
    PUBLIC,
    STRICT,
    TRAINING,
    Release,
    Verdict,
    check_egress,
    cow_view,
    grant,
    lendable,
    may_leave,
    provenance,
    result_policy,
    tensors_in,
    would_change,
)
from tether.node.requests import ACCEPTED, PENDING, Approved, Request, Requests
from tether.node.state import running_under
from tether.node.store import Poisoned, Privacy, Store, Stored
from tether.ops import ALLOWLIST, PUBLISHED, REQUEST, Entry, resolve
from tether.wire import (
    Call,
    Delete,
    Done,
    Failure,
    Get,
    Parts,
    Put,
    Ref,
    Value,
    decode,
    decode_parts,
    encode_parts,
    torchstate,
)
from tether.wire.codec import DTYPE_NAMES

log = logging.getLogger(__name__)
SCALARS = frozenset((int, float, bool, str, type(None)))
# What `Node.run` takes: raw bytes, an unjoined frame (in process), or decoded commands.
Frame = bytes | bytearray | memoryview | Parts | list


@dataclass(slots=True)
class Answer:
    """A node's answer to one frame: one reply per command. `lent`: by position, the Values
    handed to a client in this process as they are (the stored tensors' own memory); their
    places in `replies` hold a `Done`."""

    replies: list
    lent: dict[int, Value] = field(default_factory=dict)

    def parts(self) -> Parts:
        """The replies encoded as one unjoined frame. Its buffers are views of stored
        tensors: send (or read) them before the node runs the next frame."""
        try:
            return encode_parts(self.replies)
        except Exception:  # a value the codec cannot carry: that reply becomes a Failure
            return encode_parts([_encodable(reply) for reply in self.replies])


@dataclass(frozen=True)
class Limits:
    """What one client may make a node do. Sizes in bytes; elements of a single result."""

    max_elements: int = 2**28
    max_stored_bytes: int = 8 * 2**30
    max_frame_bytes: int = 2**31
    max_flops: int = 2**36  # of one command (about 69 GFLOP: seconds of one core)
    # of one call of a releasing routine (`fit`: epochs of training; about 70 TFLOP)
    max_routine_flops: int = 2**46
    max_objects: int = 100_000  # stored at once (see Store)


@dataclass(frozen=True)
class Caller:
    """Who calls a routine registered with `caller=True` (approving routines are), handed to
    it as `caller=`: the client's id, and the keys the owner published the data it names
    (at its `data_args`) under."""

    client: str
    published: tuple[str, ...]


class _Refused(Exception):
    """A command broke a rule; becomes a Failure of the given kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Node:
    """Executes commands for its clients against their stores.

    `release`: the owner's release policy (`tether.node.policy.Release`, or its name):
    - "open": results computed from private data may be fetched freely (the owner's data
      itself only through an accepted request): simulation, tutorials (`VirtualWorker`);
    - "training" (the default): only what the node's own routines return leaves (delegated
      `fit`/`evaluate`, aggregates the owner `declare`d); pointer computations on private data
      give pointers that never release;
    - "strict" (Duet): nothing computed from private data leaves without an accepted request.
    Outside "open", every command runs in the node's `guard` (tether.node.guard), and one on
    private data is quiet: no description of its results, and a failure poisons them instead
    of being reported. Requests go to `requests` (the owner's desk).
    """

    # Whether the shapes of the owner's published private objects are kept from clients too
    # (Duet's node); what is computed from them is never described outside `open`.
    hides_private_sizes = False

    def __init__(
        self,
        name: str,
        *,
        limits: Limits | None = None,
        release: Release | str = TRAINING,
        requests: Requests | None = None,
        guarded: bool | None = None,
    ) -> None:
        self.name = name
        self.limits = limits or Limits()
        self._guarded = guarded
        self.release = Release.parse(release)
        # The copy-on-write clones of published tensors handed out, by id (see `_published`).
        self._clones: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()
        self._clone_keys: dict[int, str] = {}  # the key each of those was published under
        self.requests = requests or Requests()
        self.routines: dict[str, Entry] = {}  # the owner's declared aggregates
        self.bound: dict[str, dict[str, Any]] = {}  # the owner's own arguments, per op
        self.published: dict[str, Stored] = {}
        self._stores: dict[str, Store] = {}
        self._lock = threading.Lock()

    @property
    def release(self) -> Release:
        return self._release

    @release.setter
    def release(self, release: Release | str) -> None:
        """Set the policy, and with it the guard (`tether.node.guard`) every command runs in,
        except on an `open` node that is not `guarded` (in process, where the scientist may
        see everything anyway and the per-op cost would show; `guarded=True`: a network
        worker in `open`, for its cost bounds and zeroed memory)."""
        self._release = release = Release.parse(release)
        guarded = release is not OPEN if self._guarded is None else self._guarded
        self.guard = (
            Guard(
                strict=release is STRICT,
                taint=release is not OPEN,
                max_elements=self.limits.max_elements,
                max_flops=self.limits.max_flops,
            )
            if guarded
            else None
        )

    # ---- what the owner does -----------------------------------------------------------------

    def publish(
        self,
        key: str,
        value: Any,
        *,
        private: bool = True,
        tags: tuple[str, ...] = (),
        description: str = "",
    ) -> None:
        """Expose `value` to clients under `key` (they reach it with `worker.published(key)`).
        Private values can be computed on but not fetched; nobody may change them in place."""
        privacy = PRIVATE if private else PUBLIC
        value = cow_view(value)  # so that every later view can be a lazy copy, and cost nothing
        self.published[key] = Stored(
            value, privacy, readonly=True, tags=tuple(tags), description=description
        )

    def declare(self, path: str, fn: Any, data_args: tuple[int, ...] = (0,)) -> Entry:
        """Declare an aggregate whose result may leave this node under the `training` policy
        (as `fit`'s does): a function of what clients name (`client.call(path, [ref(data)])`)
        that returns plain data, such as per-label counts. Only this node serves it. `path`
        is named as a feature's op is ("tether.<owner>.<name>"), and must be new. The
        owner's data may reach it at positions `data_args`, as the published objects
        themselves. Declare only what you would publish: its result leaves."""
        if resolve(path) is not None or path in self.routines:
            raise ValueError(f"{path!r} is already an op of this node")
        if not path.startswith("tether.") or "__" in path or path.count(".") < 2:
            raise ValueError(f"a declared aggregate must be named tether.<owner>.<name>: {path!r}")
        entry = Entry(path, fn, releases=True, data_args=tuple(data_args))
        self.routines[path] = entry
        return entry

    def bind(self, path: str, **arguments: Any) -> None:
        """Pass the owner's own keyword `arguments` to every call of the op at `path` on this
        node (a feature's rules, such as the DP budget `fit` enforces), as `max_elements` is
        passed to node-limited ops: a client that passes one of them is refused."""
        if resolve(path) is None and path not in self.routines:
            raise ValueError(f"{path!r} is not an op of this node")
        self.bound.setdefault(path, {}).update(arguments)

    def store(self, client: str = "local") -> Store:
        """The store of one client (made on first use)."""
        with self._lock:
            found = self._stores.get(client)
            if found is None:
                found = self._stores[client] = Store(
                    self.limits.max_stored_bytes, self.limits.max_objects
                )
            return found

    @property
    def clients(self) -> list[str]:
        """The clients that have a store here (one per connection)."""
        with self._lock:
            return list(self._stores)

    def forget(self, client: str) -> None:
        """Drop everything a client stored (it disconnected)."""
        with self._lock:
            store = self._stores.pop(client, None)
        if store is not None:
            store.clear()

    # ---- what a client does ------------------------------------------------------------------

    def run(
        self, frame: Frame, client: str = "local", *, lend: frozenset[int] = frozenset()
    ) -> Answer:
        """The one way in: answer a frame of commands with one reply per command. Never raises.

        `frame` is raw bytes (checked against `max_frame_bytes`, then decoded), an unjoined
        `Parts` frame from a client in this process, or a list of commands already decoded
        (by the server, on its loop). A frame that does not decode is answered with one
        `WireError` failure. `lend`: positions of the Gets whose values a client in this
        process takes as its own (`Client.get(adopt=True)`); see `Answer.lent`."""
        if isinstance(frame, list):
            commands = frame
        else:
            try:
                if isinstance(frame, Parts):
                    commands = decode_parts(frame)
                else:
                    if len(frame) > self.limits.max_frame_bytes:
                        raise WireError(
                            f"frame of {len(frame)} bytes is over this node's limit of "
                            f"{self.limits.max_frame_bytes}"
                        )
                    commands = decode(frame)
            except WireError as exc:
                return Answer([Failure("WireError", str(exc))])
        admitted = self._admit(commands, client)
        if type(admitted) is list:
            return Answer(admitted)
        client = cast(str, admitted)
        replies = self._execute(commands, client)
        if not lend:
            return Answer(replies)
        # Lending, the in-process fast path (see tether.transports.inprocess): the Values of
        # adopted Gets that the policy lets the client hold leave the replies (a Done stands in)
        # and are handed over as they are, so nothing is encoded or copied.
        store = self.store(client)
        lent = {
            i: replies[i]
            for i in lend
            if type(replies[i]) is Value
            and type(commands[i]) is Get
            and lendable(store, commands[i].ids, self.release)
        }
        for i in lent:
            replies[i] = Done()
        return Answer(replies, lent)

    def _admit(self, commands: list, client: str) -> str | list:
        """Whom this frame runs for: the client id to run it as, or instead the replies that
        answer it (a subclass's gate: Duet's hello and confirmation). Here, `client`."""
        return client

    def _execute(self, commands: list, client: str) -> list:
        """Run decoded commands in order; one reply each. Never raises."""
        store = self.store(client)
        # Results a later command of this frame frees: the client holds no pointer to them, so
        # their replies carry no description.
        freed = {i for cmd in commands if type(cmd) is Delete for i in cmd.ids}
        replies: list = []
        # Each run of Calls issued in one torch state runs under it (see tether.node.state);
        # the other commands depend on no torch state.
        here = torchstate.current()
        for state, run in itertools.groupby(commands, _issued_in):
            with contextlib.nullcontext() if state is None else running_under(state, here):
                replies.extend([self._execute_one(cmd, store, client, freed) for cmd in run])
        return replies

    def _execute_one(self, cmd: Any, store: Store, client: str, freed: set[int]) -> Any:
        try:
            if isinstance(cmd, Call):
                return self._call(cmd, store, client, freed)
            if isinstance(cmd, Put):
                if self.guard is not None:  # the client's own bytes, in fresh memory
                    self.guard.mark(cmd.value, PUBLIC)
                store.put(cmd.id, Stored(cmd.value))
                return Done(_meta(cmd.value))
            if isinstance(cmd, Get):
                return self._get(cmd, store, client)
            if isinstance(cmd, Delete):
                for obj_id in cmd.ids:
                    store.delete(obj_id)
                return Done()
            return Failure("WireError", f"{type(cmd).__name__} is not a command")
        except _Refused as exc:
            failure = Failure(exc.kind, str(exc))
        except MemoryError as exc:
            failure = Failure(LimitError.__name__, str(exc) or "out of memory")
        except Exception as exc:  # a failing op is reported, never fatal
            exc = _reported(exc)
            failure = Failure(type(exc).__name__, str(exc))
        if isinstance(cmd, Call | Put):
            made = cmd.out if isinstance(cmd, Call) else cmd.id
            for obj_id in [] if made is None else made if isinstance(made, list) else [made]:
                store.mark_failed(obj_id, f"{getattr(cmd, 'op', 'put')}: {failure.message}")
        return failure

    def _call(self, cmd: Call, store: Store, client: str, freed: set[int]) -> Done:
        """Run an allowlisted call; store its result under `out`, or each of its results
        under each of a list of outs (a batch loader's `split`: one command, many pointers).
        Results a later command of the frame frees (`freed`) go undescribed."""
        entry = resolve(cmd.op) or self.routines.get(cmd.op)
        if entry is None:
            if cmd.op == PUBLISHED:
                return self._published(cmd, store)
            if cmd.op == REQUEST:
                return self._request_status(cmd, store, client)
            raise _Refused(NotAllowedError.__name__, _not_allowed(cmd.op))
        inputs: list[Stored] = []
        refs = cmd.refs
        args = tuple(
            [
                self._object(a, store, inputs)
                if refs >> i & 1
                else a
                if type(a) in SCALARS
                else self._resolve(a, store, inputs)
                for i, a in enumerate(cmd.args)
            ]
        )
        kwargs = (
            {
                k: v if type(v) in SCALARS else self._resolve(v, store, inputs)
                for k, v in cmd.kwargs.items()
            }
            if cmd.kwargs
            else {}
        )
        if entry.node_limited:
            if "max_elements" in kwargs:
                raise _Refused(
                    NotAllowedError.__name__,
                    f"{entry.path}: max_elements is this node's own limit, not a client's",
                )
            kwargs["max_elements"] = self.limits.max_elements
        if entry.caller:
            if "caller" in kwargs:
                raise _Refused(NotAllowedError.__name__, f"{entry.path}: caller is set by the node")
            if entry.approves:
                self._check_approving(entry, cmd, store, client)
            kwargs["caller"] = self._caller(entry, args, client)
        bound = self.bound.get(entry.path)
        if bound:
            taken = sorted(bound.keys() & kwargs.keys())
            if taken:
                raise _Refused(
                    NotAllowedError.__name__,
                    f"{entry.path}: {', '.join(taken)} is set by this node's owner, not a client",
                )
            kwargs.update(bound)
        privacy, protected, poisoned = PUBLIC, [], False  # one pass over the inputs
        level: int = PUBLIC  # of the memory of the tensors named directly
        guard = self.guard
        for stored in inputs:
            if stored.privacy > privacy:
                privacy = stored.privacy
            if stored.readonly:
                protected.append(stored.value)
            value = stored.value
            if guard is not None and isinstance(value, torch.Tensor):
                level = max(level, guard.level_of((value,)))
            poisoned = poisoned or type(value) is Poisoned
        ambient: int = DERIVED if privacy or entry.path in OWNER_FACTS else PUBLIC
        level = max(level, ambient)
        try:
            if poisoned:  # what was computed from a failure is poisoned too, without running
                raise _Refused("PoisonedValueError", f"{entry.path}: an input is poisoned")
            self._check(entry, args, kwargs, protected)
            if guard is None:
                result = entry.fn(*args, **kwargs)
            else:
                flops = self.limits.max_routine_flops if entry.releases else None
                with guard.command(ambient, flops) as mode:
                    try:
                        result = entry.fn(*args, **kwargs)
                    finally:
                        level = max(level, mode.read)
            if entry.approves:
                return self._approve(cmd, entry, result, inputs, store, client, level, protected)
            return self._keep_results(cmd, entry, result, inputs, store, level, protected, freed)
        except Exception as exc:
            if not self._quiet(entry, level):
                raise
            exc = _reported(exc)
            kind = exc.kind if isinstance(exc, _Refused) else type(exc).__name__
            return self._poison(cmd, store, f"{entry.path}: {kind}: {exc}")

    def _keep_results(
        self,
        cmd: Call,
        entry: Entry,
        result: Any,
        inputs: list[Stored],
        store: Store,
        level: int,
        protected: list,
        freed: set[int],
    ) -> Done:
        """Store a call's result under its out id (or each item under each of a list of
        ids), with the policy its inputs and the memory it read (`level`) give it."""
        privacy = DERIVED if level else PUBLIC
        _check_result_size(entry.path, result, self.limits.max_elements)
        out = cmd.out
        if out is None:
            return Done()
        if type(out) is list and not (isinstance(result, tuple | list) and len(result) == len(out)):
            got = f"{len(result)} results" if isinstance(result, tuple | list) else "one result"
            asked = len(cast(list, out))
            raise _Refused("TypeError", f"{entry.path} gave {got}, not the {asked} asked for")
        tags = _tags(inputs)
        # A releasing routine's result on the owner's data leaves a training node as it is now.
        granted = (
            entry.path
            if privacy
            and entry.releases
            and self.release is TRAINING
            and self._owner_data_only_at(entry, cmd, store)
            else ""
        )
        # A quiet call's reply is the same whether it ran or was poisoned: no description.
        quiet = self._quiet(entry, level)
        made = provenance(entry.path, inputs) if privacy else ""
        described = []
        outs = [(out, result)] if type(out) is int else zip(cast(list, out), result, strict=True)
        for obj_id, item in outs:
            stored = self._stored(item, privacy, protected, inputs, tags, granted)
            stored.provenance = made
            store.put(obj_id, stored)
            described.append(None if quiet or obj_id in freed else self._describe(stored))
        return Done(described[0] if type(out) is int else described)

    def _check_approving(self, entry: Entry, cmd: Call, store: Store, client: str) -> None:
        """Refuse a call of an approving routine unless the owner's data reaches it only as
        published objects at its `data_args` (the rows of a derived tensor may each depend on
        many rows of the data: nothing the routine is told could bound that) and its result
        gets a new id. Each is a fact about what the client named: the refusal tells nothing
        private."""
        if type(cmd.out) is not int:
            raise _Refused("TypeError", f"{entry.path} gives one result, to one object id")
        if self.requests.matching(client, cmd.out, PENDING):
            raise _Refused(
                NotAllowedError.__name__,
                f"{entry.path}: object {cmd.out} has a request waiting: release into a new id",
            )
        if not self._owner_data_only_at(entry, cmd, store):
            raise _Refused(
                NotAllowedError.__name__,
                f"{entry.path} takes the owner's data only as it was published (a pointer from "
                "duet.store[...] or worker.published(...), or an item of a published pair), "
                "not computed from it: one row of a derived tensor may depend on many rows of "
                "the data, which its privacy accounting cannot bound",
            )

    def _caller(self, entry: Entry, args: tuple, client: str) -> Caller:
        """Who calls a routine, and the keys under which the data at its `data_args` (when
        it is published data itself) was published."""
        keys = []
        for i in entry.data_args:
            value = args[i] if i < len(args) else None
            for item in value if isinstance(value, tuple | list) else [value]:
                if self._clones.get(id(item)) is item:
                    keys.append(self._clone_keys[id(item)])
        return Caller(client, tuple(dict.fromkeys(keys)))

    def _approve(
        self,
        cmd: Call,
        entry: Entry,
        result: Any,
        inputs: list[Stored],
        store: Store,
        client: str,
        level: int,
        protected: list,
    ) -> Done:
        """Keep an approving routine's result and file it as a request that the owner's
        standing approval, which the routine enforced, accepted: the client's Get releases
        that copy once, and the owner sees it among the requests and in the audit log."""
        if not isinstance(result, Approved):
            raise TypeError(f"{entry.path} must return an Approved, not a {type(result).__name__}")
        done = self._keep_results(cmd, entry, result.value, inputs, store, level, protected, set())
        stored = store.objects[cast(int, cmd.out)]
        self.requests.submit(
            client,
            cast(int, cmd.out),
            result.name,
            result.reason,
            stored.tags,
            stored.description,
            result.value,
            provenance=stored.provenance,
            accepted_by=result.by,
        )
        return done

    def _quiet(self, entry: Entry, level: int) -> bool:
        """Whether a failure of this call tells nothing: on private data (`level`), outside the
        node's releasing routines, where the policy is not `open` (then the failure, and its
        text, would be a channel from the data to the client). An approving routine's
        failures are reported: it raises only on public facts (`register`)."""
        if not level or self.release is OPEN or entry.approves:
            return False
        return self.release is STRICT or not entry.releases

    def _poison(self, cmd: Call, store: Store, cause: str) -> Done:
        """Store a poisoned value in place of each result of a failed call on private data and
        answer as if it ran: the client learns nothing from whether (or why) it failed."""
        log.info("a command on private data failed for a client: %s", cause)
        poison = Stored(Poisoned(cause), DERIVED, provenance=f"{cause} (poisoned)")
        out = cmd.out
        if out is None:
            return Done()
        for obj_id in [out] if type(out) is int else cast(list[int], out):
            store.put(obj_id, replace(poison))
        return Done(None if type(out) is int else [None] * len(cast(list, out)))

    @staticmethod
    def _stored(
        result: Any,
        privacy: Privacy,
        protected: list,
        inputs: list[Stored],
        tags: tuple[str, ...],
        routine: str = "",
    ) -> Stored:
        """A result with its policy (`policy.result_policy`), and the grant of the `routine`
        that made it, if one may release it (`policy.grant`)."""
        privacy, readonly = result_policy(result, privacy, protected, inputs)
        made = grant(routine, result) if routine and not readonly else None
        return Stored(result, privacy, readonly, tags=tags, grant=made)

    def _describe(self, stored: Stored) -> list:
        """What the client may know of a stored object without fetching it: kind, shape (or
        length), dtype. A node that hides private sizes keeps kind and dtype (methods resolve
        by them) and leaves out the rest."""
        meta = _meta(stored.value)
        if stored.privacy == PUBLIC or not self.hides_private_sizes:
            return meta
        return [meta[0], None, *meta[2:]] if meta[0] == "tensor" else meta[:2]

    def _published(self, cmd: Call, store: Store) -> Done:
        """What the owner published under a key (or item `index` of it, for a (data, labels)
        pair): the same object, with the owner's policy."""
        args = cmd.args
        if not (
            1 <= len(args) <= 2
            and isinstance(args[0], str)
            and not cmd.kwargs
            and not cmd.refs
            and (len(args) == 1 or type(args[1]) is int)
            and type(cmd.out) is int
        ):
            raise _Refused("TypeError", f"{PUBLISHED} takes a key and an optional item index")
        stored = self.published.get(args[0])
        if stored is None:
            keys = ", ".join(sorted(self.published)) or "nothing"
            raise _Refused(
                "ObjectNotFoundError",
                f"worker {self.name!r} publishes no {args[0]!r} (it publishes: {keys})",
            )
        value = stored.value
        if len(args) == 2:
            if not (isinstance(value, tuple | list) and -len(value) <= args[1] < len(value)):
                raise _Refused(
                    "ObjectNotFoundError",
                    f"{args[0]!r} on worker {self.name!r} has no item {args[1]}",
                )
            value = value[args[1]]
        # Never the owner's tensors themselves: copy-on-write clones, which no write reaches
        # through (policy.cow_view); their memory is the owner's data to the guard.
        value = cow_view(value)
        clones = [value] if isinstance(value, torch.Tensor) else []
        if isinstance(value, tuple | list):
            clones = [v for v in value if isinstance(v, torch.Tensor)]
        for clone in clones:
            self._clones[id(clone)] = clone
            self._clone_keys[id(clone)] = args[0]
            weakref.finalize(clone, self._clone_keys.pop, id(clone), None)
        if self.guard is not None:
            self.guard.mark(clones, stored.privacy)
        where = f"published[{args[0]!r}]" + (f"[{args[1]}]" if len(args) == 2 else "")
        item = replace(stored, value=value, provenance=where if stored.privacy else "")
        store.put(cmd.out, item)
        return Done(self._describe(item))

    def _request_status(self, cmd: Call, store: Store, client: str) -> Done:
        """File a request for an object (or find this client's last one) without releasing
        anything; the result is its status."""
        obj_id = object_id(cmd, 0) if cmd.args else None
        if (
            len(cmd.args) != 3
            or obj_id is None
            or type(cmd.out) is not int
            or (not all(isinstance(a, str) for a in cmd.args[1:]))
        ):
            raise _Refused("TypeError", f"{REQUEST} takes a reference, a name and a reason")
        stored = self._lookup(obj_id, store)
        get = Get([obj_id], cmd.args[1], cmd.args[2])
        verdict = self._may_leave(stored, store)
        if not verdict.leaves:
            self._refuse_without_requests(obj_id, verdict)
        granted = any(r.releasable for r in self.requests.matching(client, obj_id, ACCEPTED))
        status = (
            ACCEPTED if verdict.leaves or granted else self._ask(get, obj_id, stored, client).status
        )
        store.put(cmd.out, Stored(status))
        return Done(_meta(status))

    def _check(self, entry: Entry, args: tuple, kwargs: dict, protected: list) -> None:
        """Refuse a call on the wrong type, one that could change the owner's data (the
        `protected` inputs), or one whose result would be too large."""
        if entry.self_type is not None and not (args and isinstance(args[0], entry.self_type)):
            got = type(args[0]).__name__ if args else "nothing"
            raise _Refused(
                "TypeError",
                f"{entry.path} needs a {entry.self_type.__name__} as its first argument, got {got}",
            )
        if protected and would_change(entry.path, args, kwargs, protected):
            raise _Refused(
                NotAllowedError.__name__,
                f"{entry.path} could change the owner's data in place; copy it first",
            )
        if entry.guard is not None:
            try:
                elements = entry.guard(args, kwargs)
            except Exception as exc:
                raise _Refused(
                    LimitError.__name__,
                    f"{entry.path}: cannot bound the size of its result ({exc})",
                ) from None
            if elements > self.limits.max_elements:
                raise _Refused(
                    LimitError.__name__,
                    _too_big(entry.path, elements, self.limits.max_elements),
                )

    def _resolve(self, value: Any, store: Store, inputs: list[Stored]) -> Any:
        """Replace Refs by the objects they name (collecting those objects' policies)."""
        if type(value) in SCALARS:
            return value
        if type(value) is Ref:
            return self._object(value.id, store, inputs)
        if isinstance(value, list):
            return [self._resolve(v, store, inputs) for v in value]
        if isinstance(value, tuple):
            return tuple(self._resolve(v, store, inputs) for v in value)
        if isinstance(value, dict):
            return {k: self._resolve(v, store, inputs) for k, v in value.items()}
        return value

    def _object(self, obj_id: int, store: Store, inputs: list[Stored]) -> Any:
        """The stored object `obj_id` names (collecting its policy)."""
        stored = store.objects.get(obj_id) if type(obj_id) is int else None
        if stored is None:
            stored = self._lookup(obj_id, store)
        inputs.append(stored)
        return stored.value

    def _lookup(self, obj_id: int, store: Store) -> Stored:
        if type(obj_id) is not int:  # a hostile Call can mark any argument as a reference
            raise _Refused("TypeError", f"{str(obj_id)[:40]!r} is not an object id")
        stored = store.objects.get(obj_id)
        if stored is not None:
            return stored
        why = store.failed.get(obj_id)
        detail = (
            f" (the command that was to make it failed: {why})"
            if why
            else (" (it was freed, moved with .get(), or never sent)")
        )
        raise _Refused(
            "ObjectNotFoundError", f"object {obj_id} is not on worker {self.name!r}{detail}"
        )

    def _get(self, cmd: Get, store: Store, client: str) -> Value:
        """All the values asked for, or (if one may not leave) none: an accepted request is
        spent only when its value leaves."""
        values: list = []
        granted: dict[int, Request] = {}  # by position
        for obj_id in cmd.ids:
            stored = self._lookup(obj_id, store)
            verdict = self._may_leave(stored, store)
            if verdict.leaves:
                values.append(verdict.value)
                continue
            self._refuse_without_requests(obj_id, verdict)
            granted[len(values)] = self._granted(cmd, obj_id, stored, client)
            values.append(None)
        # Every id may leave: each accepted request releases the copy the owner saw when it
        # was filed (whatever the id holds now: a later write or rebinding changes nothing).
        for i, request in granted.items():
            values[i] = request.release()
            check_egress(values[i])
        return Value(values)

    def _owner_data_only_at(self, entry: Entry, cmd: Call, store: Store) -> bool:
        """Whether a routine's call carries private data only where the routine takes the
        owner's data (`entry.data_args`), and there only as a published object itself (or
        the routine's own kept state, `_routine_input`): no
        derived value and no view of the data anywhere (a spec's weights set from the data,
        a config holding it), which the routine could hand back as its result."""
        for i, arg in enumerate(cmd.args):
            found: list[Stored] = []
            marked = cmd.refs >> i & 1
            if marked:
                self._object(arg, store, found)
            else:
                self._resolve(arg, store, found)
            if not any(self._private(s) for s in found):
                continue
            ref = marked or type(arg) is Ref
            if not (i in entry.data_args and ref and self._routine_input(entry, found[0].value)):
                return False
        found = []
        for value in (cmd.kwargs or {}).values():
            self._resolve(value, store, found)
        return not any(self._private(s) for s in found)

    def _routine_input(self, entry: Entry, value: Any) -> bool:
        """What a routine may take where the owner's data goes: the published data itself, or
        the state a feature's routines keep between calls (an object of the routine's
        `self_type`, which only routines make: secure aggregation's MaskingClient)."""
        if entry.self_type is not None and isinstance(value, entry.self_type):
            return True
        return self._is_published(value)

    def _private(self, stored: Stored) -> bool:
        """Whether an object is, or holds memory written with, private data."""
        if stored.privacy:
            return True
        return self.guard is not None and bool(self.guard.level_of(tensors_in(stored.value)))

    def _is_published(self, value: Any) -> bool:
        """Whether `value` is published data as `_published` handed it out: a clone of a
        published tensor, or a tuple or list of them."""
        items = value if isinstance(value, tuple | list) and value else [value]
        return all(self._clones.get(id(v)) is v for v in items)

    def _may_leave(self, stored: Stored, store: Store) -> Verdict:
        return may_leave(stored, self.release, self.guard)

    def _refuse_without_requests(self, obj_id: int, verdict: Verdict) -> None:
        """Under `training`, what may not leave is refused outright: no request is filed (a
        network worker has no owner at a desk), and the refusal says what does leave."""
        if self.release is not TRAINING:
            return
        what = (
            "is the owner's private data"
            if verdict.why == "private"
            else "was computed from private data (or shares memory with what was)"
        )
        routines = ", ".join(self._routine_names()) or "none registered"
        raise _Refused(
            NotAllowedError.__name__,
            f"object {obj_id} on worker {self.name!r} {what}; this worker's release policy is "
            f"'training': only the results of its routines leave ({routines}), and pointer "
            "computations on its data give pointers that never do",
        )

    def _routine_names(self) -> list[str]:
        return sorted({p for p, e in ALLOWLIST.items() if e.releases} | set(self.routines))

    def _granted(self, cmd: Get, obj_id: int, stored: Stored, client: str) -> Request:
        """The accepted request that releases this object to the client (filing one, and waiting
        for it, if there is none); raise if there is none yet or it was denied."""
        for request in self.requests.matching(client, obj_id, ACCEPTED):
            if request.releasable:
                return request
        request = self._ask(cmd, obj_id, stored, client)
        where = f"object {obj_id} on worker {self.name!r} is private: request {request.id}"
        if request.status == PENDING:
            raise _Refused("RequestPendingError", f"{where} waits for the owner's answer")
        if request.status != ACCEPTED:
            raise _Refused("PermissionDeniedError", f"{where} was {request.status}")
        return request

    def _ask(self, cmd: Get, obj_id: int, stored: Stored, client: str) -> Request:
        """File a request (or find the pending one) and wait up to `cmd.wait` for the answer."""
        pending = self.requests.matching(client, obj_id, PENDING)
        request = (
            pending[0]
            if pending
            else self.requests.submit(
                client,
                obj_id,
                cmd.name,
                cmd.reason,
                stored.tags,
                stored.description,
                stored.value,
                provenance=stored.provenance,
            )
        )
        if request.status == PENDING and cmd.wait > 0:
            request.wait(cmd.wait)
        return request


def object_id(cmd: Call, i: int) -> int | None:
    """The id that positional argument `i` of a Call names (as a Ref, or a plain id marked in
    `refs`), or None if it names none."""
    arg = cmd.args[i]
    if cmd.refs >> i & 1:
        return arg if type(arg) is int else None
    return arg.id if type(arg) is Ref else None


def _issued_in(cmd: Any) -> int | None:
    """The torch state a command runs under: a Call's own, None for the others."""
    return cmd.state if type(cmd) is Call else None


def _tags(inputs: list[Stored]) -> tuple[str, ...]:
    """The owner's tags of a call's inputs, which its results carry (a loop: most inputs have
    none, and this runs for every command)."""
    for stored in inputs:
        if stored.tags:
            return tuple(dict.fromkeys(t for s in inputs for t in s.tags))
    return ()


def _reported(exc: Exception) -> Exception:
    """The error to report: where the cost estimate failed on the op's own checks (shapes
    that do not match), the op's own error, which says why."""
    if isinstance(exc, LimitError) and isinstance(exc.__cause__, RuntimeError):
        return exc.__cause__
    return exc


def _encodable(reply: Any) -> Any:
    try:
        encode_parts([reply])
    except Exception as exc:
        return Failure("TypeError", f"the result cannot be sent: {type(exc).__name__}: {exc}")
    return reply


def _not_allowed(op: Any) -> str:
    name = op if isinstance(op, str) else repr(op)
    if isinstance(op, str) and "__" in op:
        return f"{name!r} is refused: dunder names are never remote-callable"
    return f"{name!r} is not in the allowlist (see tether/ops/table.py)"


def _too_big(path: str, elements: int, limit: int) -> str:
    return f"{path} would allocate {elements:,} elements; this node allows {limit:,} per result"


def _check_result_size(path: str, result: Any, limit: int) -> None:
    """Catch views (expand, ...) whose size the guards did not bound, before anything uses them."""
    tensors = result if isinstance(result, list | tuple) else (result,)
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.numel() > limit:
            raise _Refused(LimitError.__name__, _too_big(path, t.numel(), limit))


def _meta(value: Any) -> list:
    """What the client may know of a stored object without fetching it: its kind and shape."""
    if isinstance(value, torch.Tensor):
        return [
            "tensor",
            list(value.shape),
            DTYPE_NAMES.get(value.dtype, str(value.dtype)),
            value.requires_grad,
        ]
    if isinstance(value, torch.nn.Module):
        return ["module", type(value).__name__]
    if isinstance(value, torch.optim.Optimizer):
        return ["optimizer", type(value).__name__]
    if isinstance(value, torch.optim.lr_scheduler.LRScheduler):
        return ["scheduler", type(value).__name__]
    if isinstance(value, list | tuple):
        return ["object", type(value).__name__, len(value)]
    return ["object", type(value).__name__]

"""Break tether on purpose, one behaviour at a time, and check that the suite notices.

Each mutation replaces one exact piece of library code (it must occur once) in a scratch copy
of the working tree, then runs the tests that should catch it, with a per-test timeout and a
deadline for the whole run. A mutation is CAUGHT when a test fails, MISSED when all pass, and
HUNG when the run outlives its deadline (the suite must fail fast, never hang).

    python tools/mutation_check.py            # all mutations
    python tools/mutation_check.py -k codec   # those whose name contains "codec"
    python tools/mutation_check.py --full -k accept   # the whole suite, not stopping early

It exits 1 if any mutation is missed or hangs, so it can gate a change.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 600  # one mutation's whole test run; pytest-timeout bounds each test far below


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = [
    Mutation(
        "fedavg-unweighted",
        "the coordinator weights every worker 1 instead of by its samples",
        "tether/federated/coordinator.py",
        'Update(name, result["weights"], result["samples"])',
        'Update(name, result["weights"], 1)',
        ("tests/test_coordinator.py",),
    ),
    Mutation(
        "codec-longer-buffer",
        "the codec accepts a tensor buffer longer than its header says, and truncates it",
        "tether/wire/codec.py",
        "    buf = buffers[index]\n    numel = math.prod(shape)\n",
        "    numel = math.prod(shape)\n    buf = buffers[index][: numel * itemsize]\n",
        ("tests/test_wire.py",),
    ),
    Mutation(
        "resume-without-weights",
        "--resume restores the round number and history but not the checkpoint's weights",
        "tether/federated/coordinator.py",
        "        r, self.state, self.history = found\n",
        "        r, _, self.history = found\n",
        ("tests/test_coordinator.py",),
    ),
    Mutation(
        "policy-releases-everything",
        "the node releases derived objects under every policy, as if each were 'open'",
        "tether/node/policy.py",
        "    if release is not OPEN:\n        level = ",
        "    if False:\n        level = ",
        (
            "tests/test_policies.py",
            "tests/test_requests.py",
            "tests/test_duet.py",
            "tests/test_hostile.py",
        ),
    ),
    Mutation(
        "routine-grant-any-input",
        "fit's result leaves a training worker though the data reached it inside its spec",
        "tether/node/node.py",
        "            and self._owner_data_only_at(entry, cmd, store)\n",
        "",
        ("tests/test_policies.py",),
    ),
    Mutation(
        "routine-grant-object-marks",
        "fit's result leaves though its spec holds a tensor of the scientist's written with data",
        "tether/node/node.py",
        "bool(self.guard.level_of(tensors_in(stored.value)))",
        "False",
        ("tests/test_policies.py",),
    ),
    Mutation(
        "guard-no-write-marks",
        "the guard does not mark the memory an op writes with private-derived data",
        "tether/node/guard.py",
        "                if (guard.strict or i in writes) and levels.get(s, PUBLIC) < DERIVED:",
        "                if False:",
        ("tests/test_attacks.py", "tests/test_policies.py"),
    ),
    Mutation(
        "guard-precise-only",
        "a training node counts only annotated writes (torch's schema is silent on BatchNorm's)",
        "tether/node/guard.py",
        "            or info.is_mutable(_SA(_INPUT, i))",
        "            or False",
        ("tests/test_attacks.py",),
    ),
    Mutation(
        "no-copy-on-write",
        "clients get the owner's published tensors themselves, not copy-on-write clones",
        "tether/node/policy.py",
        "            return value._lazy_clone()",
        "            return value",
        ("tests/test_attacks.py", "tests/test_requests.py"),
    ),
    Mutation(
        "failures-reported",
        "a command failing on private data is reported to the scientist, not poisoned",
        "tether/node/node.py",
        "        if not level or self.release is OPEN:\n            return False",
        "        if True:\n            return False",
        ("tests/test_attacks.py", "tests/test_policies.py"),
    ),
    Mutation(
        "empty-not-zeroed",
        "torch.empty and kin hand out memory as the allocator left it",
        "tether/node/guard.py",
        "        if info.uninitialized:\n            out.zero_()\n        if level:",
        "        if level:",
        ("tests/test_attacks.py",),
    ),
    Mutation(
        "approval-bound-to-id",
        "an accepted request releases what the id holds at Get time, not the owner's snapshot",
        "tether/node/node.py",
        "            values[i] = request.release()\n",
        "            values[i] = (request.release(), self._lookup(cmd.ids[i], store).value)[1]\n",
        ("tests/test_attacks.py", "tests/test_requests.py"),
    ),
    Mutation(
        "owner-data-writable",
        "in-place ops and out= may write into the owner's published data",
        "tether/node/policy.py",
        "return any(t is p for t in targets for p in protected)",
        "return False",
        ("tests/test_hostile.py", "tests/test_pointers.py"),
    ),
    Mutation(
        "allowlist-resolves-unlisted",
        "a path missing from the op table runs something instead of being refused",
        "tether/ops/table.py",
        "return ALLOWLIST.get(path) if isinstance(path, str) else None",
        'return ALLOWLIST.get(path, ALLOWLIST["torch.add"]) if isinstance(path, str) else None',
        ("tests/test_hostile.py", "tests/test_pointers.py"),
    ),
    Mutation(
        "allowlist-any-self-type",
        "a method entry runs on an object of the wrong type",
        "tether/node/node.py",
        "if entry.self_type is not None and not (args and isinstance(args[0], entry.self_type)):",
        "if False:",
        ("tests/test_hostile.py", "tests/test_pointers.py"),
    ),
    Mutation(
        "no-size-guard",
        "a call whose result is over the node's element limit runs anyway",
        "tether/node/node.py",
        "            if elements > self.limits.max_elements:\n",
        "            if False:\n",
        ("tests/test_hostile.py", "tests/test_pointers.py"),
    ),
    Mutation(
        "codec-no-frame-limit",
        "the decoder takes frames over MAX_FRAME_BYTES",
        "tether/wire/codec.py",
        '    if len(view) > MAX_FRAME_BYTES:\n        raise WireError(f"frame of',
        '    if False:\n        raise WireError(f"frame of',
        ("tests/test_wire.py",),
    ),
    Mutation(
        "codec-no-container-budget",
        "the decoder does not count the containers a frame header opens",
        "tether/wire/codec.py",
        "        if budget[0] < 0:\n",
        "        if False:\n",
        ("tests/test_wire.py",),
    ),
    Mutation(
        "autograd-no-backflow",
        "gradients of moved activations are not sent back to the worker they came from",
        "tether/remote/autograd.py",
        '            remote_call("torch.Tensor.backward", [edge.src, grad], {})',
        "            pass",
        ("tests/test_split.py", "tests/test_pointers.py"),
    ),
    Mutation(
        "optims-shared-state",
        "Optims hands every worker the same optimizer (Adam moments mix across workers)",
        "tether/federated/data/optims.py",
        "self.optimizers = {_worker_id(w): _same_kind(optim) for w in workers}",
        "self.optimizers = {_worker_id(w): optim for w in workers}",
        ("tests/test_exactness.py", "tests/test_pointers.py"),
    ),
    Mutation(
        "iid-unshuffled",
        "the IID partitioner cuts the samples in their original order",
        "tether/federated/data/partition.py",
        "    perm = torch.randperm(n_samples, generator=_generator(seed))\n",
        "    perm = torch.arange(n_samples)\n",
        ("tests/test_partition.py",),
    ),
    Mutation(
        "dirichlet-ignores-alpha",
        "the Dirichlet partitioner draws proportions with alpha 1 whatever it is given",
        "tether/federated/data/partition.py",
        "rng.dirichlet([alpha] * num_parts)",
        "rng.dirichlet([1.0] * num_parts)",
        ("tests/test_partition.py",),
    ),
    Mutation(
        "store-never-frees",
        "deleting a remote object leaves it stored (and counted against the client's bytes)",
        "tether/node/store.py",
        "        stored = self.objects.pop(obj_id, None)\n",
        "        stored = None\n",
        ("tests/test_pointers.py", "tests/test_hostile.py"),
    ),
    Mutation(
        "accept-does-nothing",
        "the owner's accept() leaves the request pending (the scientist's get must fail, not hang)",
        "tether/node/requests.py",
        '        self._decide(ACCEPTED, "owner")\n',
        "        pass\n",
        ("tests/test_requests.py", "tests/test_duet.py"),
    ),
]


def scratch_copy() -> Path:
    """The working tree's files (tracked, and untracked but not ignored), copied."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    scratch = Path(tempfile.mkdtemp(prefix="tether-mutants-"))
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, scratch / name)
    return scratch


def run(mutation: Mutation, scratch: Path, full: bool) -> tuple[str, str, float]:
    """Apply `mutation` in `scratch`, run its tests (`full`: the whole suite, every test),
    restore the file; (verdict, detail, seconds)."""
    target = scratch / mutation.path
    original = target.read_text()
    if original.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.name}: the code to break is not in {mutation.path} once")
    target.write_text(original.replace(mutation.old, mutation.new))
    env = dict(os.environ, PYTHONPATH=str(scratch))  # the scratch copy, also in subprocesses
    tests = ["tests"] if full else [*mutation.tests, "-x"]
    command = [sys.executable, "-m", "pytest", *tests, "-q", "-p", "no:cacheprovider"]
    deadline = 3 * DEADLINE_S if full else DEADLINE_S
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=scratch, env=env, capture_output=True, text=True, timeout=deadline
        )
    except subprocess.TimeoutExpired:
        return "HUNG", f"no result in {deadline} s", time.perf_counter() - start
    finally:
        target.write_text(original)
    seconds = time.perf_counter() - start
    lines = done.stdout.strip().splitlines()
    summary = lines[-1] if lines else done.stderr.strip()[-200:]
    failed = [line.split(" - ")[0] for line in lines if line.startswith(("FAILED", "ERROR"))]
    if done.returncode == 0:
        return "MISSED", summary, seconds
    return "CAUGHT", (f"{failed[0]} ({summary})" if failed else summary), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only mutations whose name contains this")
    parser.add_argument(
        "--full", action="store_true", help="run the whole suite for each, not stopping early"
    )
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if args.k in m.name]
    scratch = scratch_copy()
    bad = 0
    try:
        for mutation in chosen:
            verdict, detail, seconds = run(mutation, scratch, args.full)
            bad += verdict != "CAUGHT"
            print(
                f"{verdict:7} {mutation.name:28} {seconds:6.1f} s  {mutation.what}\n"
                f"        {detail}",
                flush=True,
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{len(chosen) - bad} of {len(chosen)} mutations caught, {bad} missed or hung")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Secure aggregation's cost: 100 workers x 1M parameters in one process, with no dropouts
and with 10% of the workers dropping after they shared their keys (their masks must then be
rebuilt from shares), against the plain baseline measured in the same run: summing the same
float32 updates, and their float32 upload.

Per worker: CPU seconds of its steps (encoding its update, making keys, sharing them,
masking, giving shares). Coordinator: CPU seconds of its steps (roster, routing, adding the
masked vectors, reconstructing the seeds and keys and removing the masks, decoding). Bytes:
each message as tether's wire format frames it (`tether.wire.encode_parts`), up and down,
per worker, over the float32 update's frame. The decoded sum is checked against the plain one.

Run: python benchmarks/bench_secagg.py [--workers 100] [--parameters 1000000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from tether.privacy.secagg import Aggregation, Encoding, MaskingClient, Setup
from tether.wire import Value, encode_parts


def wire_bytes(value: Any) -> int:
    """The bytes of a reply carrying `value`, as tether frames it."""
    return encode_parts([Value(value)]).nbytes


def update(seed: int, parameters: int) -> dict[str, torch.Tensor]:
    """A worker's trained weights: a small random move from zero."""
    g = torch.Generator().manual_seed(seed)
    return {"w": 0.01 * torch.randn(parameters, generator=g)}


class Clock:
    """CPU seconds spent per party."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    def run(self, who: str, step: Callable[[], Any]) -> Any:
        start = time.process_time()
        result = step()
        self.spent[who] = self.spent.get(who, 0.0) + time.process_time() - start
        return result


def secure_round(workers: int, parameters: int, dropouts: int) -> dict[str, Any]:
    state = {"w": torch.zeros(parameters)}
    names = [f"w{i:03d}" for i in range(workers)]
    encoding = Encoding(clients=workers, max_weight=1.0)
    setup = Setup.fresh(workers // 2 + 1, encoding)
    clock = Clock()
    up = dict.fromkeys(names, 0)
    down = dict.fromkeys(names, 0)

    def fit(i: int, name: str) -> MaskingClient:
        vector = encoding.encode(update(i, parameters), state, 1)
        return MaskingClient(name, setup, vector)

    clients = {name: clock.run(name, lambda i=i, n=name: fit(i, n)) for i, name in enumerate(names)}
    aggregation = Aggregation(setup, encoding.length(state))
    keys = {}
    for name, client in clients.items():
        keys[name] = clock.run(name, client.keys)
        up[name] += wire_bytes(keys[name])
    roster = clock.run("coordinator", lambda: aggregation.roster(keys))
    sent = {}
    for name, client in clients.items():
        down[name] += wire_bytes(roster)
        sent[name] = clock.run(name, lambda c=client: c.share_keys(roster))
        up[name] += wire_bytes(sent[name])
    mail = clock.run("coordinator", lambda: aggregation.route(sent))
    dropped = set(names[:dropouts])
    for name in names:
        down[name] += wire_bytes(mail[name])
        if name in dropped:
            continue
        masked = clock.run(name, lambda n=name: clients[n].masked_input(mail[n]))
        up[name] += wire_bytes(torch.from_numpy(masked))
        clock.run("coordinator", lambda n=name, m=masked: aggregation.add(n, m))
    survivors = clock.run("coordinator", aggregation.collected)
    answers = {}
    for name in survivors:
        down[name] += wire_bytes(survivors)
        answers[name] = clock.run(name, lambda n=name: clients[n].unmask(survivors))
        up[name] += wire_bytes(answers[name])
    total = clock.run("coordinator", lambda: aggregation.unmask(answers))
    moves, weight = clock.run("coordinator", lambda: encoding.decode(total, state))

    plain_sum = torch.zeros(parameters)
    plain_seconds = 0.0  # the additions only (the updates are made outside the clock)
    for i, name in enumerate(names):
        if name not in dropped:
            move = update(i, parameters)["w"]
            start = time.process_time()
            plain_sum += move
            plain_seconds += time.process_time() - start
    error = (moves["w"] - plain_sum.double()).abs().max().item()
    bound = len(survivors) * encoding.error(encoding.clip)
    assert error <= bound + 1e-6 * len(survivors), (error, bound)  # float32 sum's own rounding
    assert abs(weight - len(survivors)) <= len(survivors) * encoding.error(1.0)
    per_worker = [clock.spent[n] for n in survivors]
    return {
        "per_worker_mean": statistics.mean(per_worker),
        "per_worker_max": max(per_worker),
        "coordinator": clock.spent["coordinator"],
        "plain_sum": max(plain_seconds, 1e-9),
        "up": statistics.mean(up[n] for n in survivors),
        "down": statistics.mean(down[n] for n in survivors),
        "plain_up": wire_bytes(update(0, parameters)),
        "error": error,
        "survivors": len(survivors),
        "threshold": setup.threshold,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--parameters", type=int, default=1_000_000)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one worker's CPU, as on a worker's own machine
    for share in (0.0, 0.1):
        dropouts = round(share * args.workers)
        r = secure_round(args.workers, args.parameters, dropouts)
        print(
            f"{args.workers} workers x {args.parameters:,} parameters, threshold {r['threshold']}, "
            f"{dropouts} dropped after sharing keys ({r['survivors']} survivors)"
        )
        print(
            f"  per-worker CPU: mean {r['per_worker_mean']:.3f} s, max {r['per_worker_max']:.3f} s "
            f"(target <= 1 s)"
        )
        print(
            f"  coordinator CPU: {r['coordinator']:.3f} s; plain float32 sum of the same updates "
            f"{r['plain_sum']:.3f} s: ratio {r['coordinator'] / r['plain_sum']:.1f}x "
            f"(target <= 2 s without dropouts)"
        )
        print(
            f"  bytes per worker: up {r['up']:,.0f}, down {r['down']:,.0f}; plaintext float32 "
            f"upload {r['plain_up']:,}: up {r['up'] / r['plain_up']:.3f}x, "
            f"up + down {(r['up'] + r['down']) / r['plain_up']:.3f}x (target <= 2x)"
        )
        print(f"  max abs error of the decoded sum: {r['error']:.3g}")


if __name__ == "__main__":
    main()

"""A data owner in its own process, for the hostile tests (tests/test_attacks.py).

`python tests/owner_process.py --policy strict` serves a Duet node (the node a Duet owner
runs; the first client to say hello is its scientist) and `--policy training` a network
worker's node, each behind the real websocket server on 127.0.0.1, publishing:
- "secret": SECRET (3 x 4 float32, values no id, size or count in a test is),
- "pair": (SECRET, LABELS) (a dataset as `tether worker` publishes its MNIST part),
- "rows": a TensorDataset of the same.
On the strict node, requests named "approved" are accepted by an unconstrained handler, and
requests named "scalar" by one constrained to a single float. It prints `listening on <url>`,
then answers lines on stdin: `intact` prints whether the published tensors still hold their
values; `requests` prints how many requests wait for the owner. The strict node serves DP
releases (tether.duet.budget) within budgets kept in `--dp-ledger` (or in memory):
`grant CLIENT EPSILON DELTA [KEY]` grants one (KEY: one published key, else all data) and
`spent CLIENT [KEY]` prints what the grant's account has spent; `released` prints how many
requests a budget accepted.
"""

from __future__ import annotations

import argparse
import sys

import torch

from tether.duet.budget import BUDGET, RELEASE
from tether.duet.node import DuetNode
from tether.node import Node
from tether.privacy.dp import Budgets
from tether.transports.websocket import WorkerServer
from tether.transports.websocket.thread import ServerThread

SECRET = torch.tensor(
    [
        [271828.0, 314159.0, 161803.0, 141421.0],
        [173205.0, 223606.0, 1286022.0, 214331.0],
        [455580.0, 445033.0, 385409.0, 227790.0],
    ]
)
LABELS = torch.tensor([2, 0, 1])
TOKEN = "test-token"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--policy", choices=["training", "strict", "open"], default="strict")
    parser.add_argument("--dp-ledger", default=None)
    args = parser.parse_args()
    budgets = Budgets(args.dp_ledger)
    if args.policy == "strict":
        node: Node = DuetNode("owner", confirm=False)
        node.requests.add_handler(name="approved", action="accept")
        node.requests.add_handler(name="scalar", action="accept", max_elements=1, dtype=float)
        node.bind(RELEASE, budgets=budgets)
        node.bind(BUDGET, budgets=budgets)
    else:
        node = Node("owner", release=args.policy, guarded=True)
    published = {
        "secret": SECRET.clone(),
        "pair": (SECRET.clone(), LABELS.clone()),
        "rows": torch.utils.data.TensorDataset(SECRET.clone(), LABELS.clone()),
    }
    for key, value in published.items():
        node.publish(key, value)
    originals = [t for v in node.published.values() for t in _tensors(v.value)]
    with ServerThread(WorkerServer(node, port=0, token=TOKEN)) as server:
        print(f"listening on {server.url}", flush=True)
        for line in sys.stdin:
            if line.strip() == "intact":
                intact = (
                    all(torch.equal(t, SECRET) or torch.equal(t, LABELS) for t in originals)
                    and len(originals) == 5
                )
                print(f"intact {intact}", flush=True)
            elif line.strip() == "requests":
                print(f"requests {len(node.requests.pending())}", flush=True)
            elif line.startswith("grant "):
                client, epsilon, delta, *key = line.split()[1:]
                budgets.grant(client, float(epsilon), float(delta), dataset=(key or [None])[0])
                print(f"granted {client}", flush=True)
            elif line.startswith("spent "):
                client, *key = line.split()[1:]
                grant = budgets.grant_for(client, tuple(key))
                print(f"spent {budgets.ledger.spent(grant.account, grant.delta)!r}", flush=True)
            elif line.strip() == "released":
                accepted = node.requests.pandas.get("status", [])
                print(f"released {sum(s == 'accepted' for s in accepted)}", flush=True)


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, torch.utils.data.TensorDataset):
        return list(value.tensors)
    return []


if __name__ == "__main__":
    main()

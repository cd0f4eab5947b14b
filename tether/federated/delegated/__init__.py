"""Delegated training: a coordinator sends a model (as data) and a config, each worker runs
`fit`/`evaluate` on its own data. Importing this package registers the two node ops, as
releasing routines: what they return (weights and metrics) is meant to leave a worker whose
release policy is `training`."""

from tether.federated.delegated.training import evaluate, fit
from tether.node import Node
from tether.ops import register
from tether.privacy.dp import OwnerDP

# fit(spec, data, targets, config) and evaluate(...): the owner's data goes in at 1 and 2 only
# (a spec whose weights came from the data would give them back), so only there may it be.
FIT = register("tether.federated.fit", fit, node_limited=True, releases=True, data_args=(1, 2)).path
EVALUATE = register(
    "tether.federated.evaluate", evaluate, node_limited=True, releases=True, data_args=(1, 2)
).path


def enforce_dp(node: Node, rules: OwnerDP) -> None:
    """Make every `fit` on `node` train with DP-SGD under the owner's `rules` (and refuse
    `evaluate` on its data): the node passes them to each call itself, and refuses a client
    that tries to pass its own (`tether worker --dp-noise ... --max-epsilon ...`)."""
    node.bind(FIT, privacy=rules)
    node.bind(EVALUATE, privacy=rules)


__all__ = ["EVALUATE", "FIT", "enforce_dp"]

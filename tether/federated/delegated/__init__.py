"""Delegated training: a coordinator sends a model (as data) and a config, each worker runs
`fit`/`evaluate` on its own data. Importing this package registers the node ops, as releasing
routines: what they return (weights and metrics; under secure aggregation, masked updates and
the protocol's messages) is meant to leave a worker whose release policy is `training`."""

from tether.federated.delegated import secure
from tether.federated.delegated.training import evaluate, fit
from tether.node import Node
from tether.ops import register
from tether.privacy.dp import OwnerDP
from tether.privacy.secagg import MaskingClient

# fit(spec, data, targets, config) and evaluate(...): the owner's data goes in at 1 and 2 only
# (a spec whose weights came from the data would give them back), so only there may it be.
FIT = register("tether.federated.fit", fit, node_limited=True, releases=True, data_args=(1, 2)).path
EVALUATE = register(
    "tether.federated.evaluate", evaluate, node_limited=True, releases=True, data_args=(1, 2)
).path
# Secure aggregation: secure_fit keeps the update in a MaskingClient on the node; the steps
# take that object (made only here, from the owner's data) as their first argument.
SECURE_FIT = register(
    "tether.federated.secagg.fit",
    secure.secure_fit,
    node_limited=True,
    releases=True,
    data_args=(1, 2),
).path
SHARE_KEYS, MASKED_INPUT, UNMASK = (
    register(
        f"tether.federated.secagg.{step.__name__}",
        step,
        self_type=MaskingClient,
        releases=True,
        data_args=(0,),
    ).path
    for step in (secure.share_keys, secure.masked_input, secure.unmask)
)


def enforce_dp(node: Node, rules: OwnerDP) -> None:
    """Make every `fit` on `node` train with DP-SGD under the owner's `rules` (and refuse
    `evaluate` on its data): the node passes them to each call itself, and refuses a client
    that tries to pass its own (`tether worker --dp-noise ... --max-epsilon ...`)."""
    for path in (FIT, EVALUATE, SECURE_FIT):
        node.bind(path, privacy=rules)


__all__ = ["EVALUATE", "FIT", "MASKED_INPUT", "SECURE_FIT", "SHARE_KEYS", "UNMASK", "enforce_dp"]

"""Secure aggregation: the coordinator learns the sum of the workers' updates and nothing
else (see `protocol` for the steps, `ring` for how updates become ring vectors, SECURITY.md
for the security model). Pure and transport-free; tether.federated carries its messages."""

from tether.privacy.secagg.protocol import Aggregation, MaskingClient, RoundAborted, Setup
from tether.privacy.secagg.ring import Encoding

__all__ = ["Aggregation", "Encoding", "MaskingClient", "RoundAborted", "Setup"]

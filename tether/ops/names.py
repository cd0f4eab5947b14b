"""Ops the node serves itself (they need the node's state, so they are not table entries), named
here because both sides use them."""

# The op a client uses to reach what the owner published.
PUBLISHED = "tether.published"
# The op a client uses to ask for an object and learn the request's status.
REQUEST = "tether.request"

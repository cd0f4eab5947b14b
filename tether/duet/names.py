"""The names both sides of a Duet use, so the scientist's side need not import the owner's node."""

# The op a scientist's connection says hello with (its client id), answered by DuetNode itself.
HELLO = "tether.duet.hello"
# Where the owner's catalog (id, tags and description of what it published) is published.
CATALOG = "tether.duet.catalog"

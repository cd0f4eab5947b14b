"""Wire format: plain-data messages and the frames that carry them."""

from tether.wire import torchstate
from tether.wire.codec import DTYPES, Parts, decode, decode_parts, encode, encode_parts
from tether.wire.messages import Call, Delete, Done, Failure, Get, Put, Ref, Value

__all__ = [
    "DTYPES",
    "Call",
    "Delete",
    "Done",
    "Failure",
    "Get",
    "Parts",
    "Put",
    "Ref",
    "Value",
    "decode",
    "decode_parts",
    "encode",
    "encode_parts",
    "torchstate",
]

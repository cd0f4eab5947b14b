"""How a scientist's client reaches a node: in this process (`inprocess`) or over a websocket
(`websocket`: frames, the server, the client transport). Both carry the same wire frames to the
same `Node`."""

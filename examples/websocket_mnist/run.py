"""The websocket federated MNIST tutorial, end to end, in one command (as `tether demo`).

Starts alice (digits 0-3), bob (4-6), charlie (7-9) and the evaluator `testing` (the official
10,000 test images) as separate `tether worker` processes on 127.0.0.1, trains the tutorial's
CNN across them for 40 rounds (10 batches of 32 per worker per round, SGD lr 0.1, FedAvg),
prints the tutorial's report with a progress bar, and writes metrics.csv, metrics.json and
accuracy.png. Offline: the workers serve the MNIST sample shipped inside tether.

Run: python examples/websocket_mnist/run.py [--out websocket-mnist] [--rounds 40]
     [--eval-every 10] [--kill bob@3] [--central]   (the workers take free ports)
"""

import sys

from tether.cli import main

sys.exit(main(["demo", *sys.argv[1:]]))  # `tether demo`: its flags, its Ctrl-C

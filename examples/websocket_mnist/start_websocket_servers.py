"""Start the tutorial's four workers on its ports (8777-8780), as start_websocket_servers.py
did, and keep them up until Ctrl-C; then train with
    tether train --federation examples/websocket_mnist/federation.toml
(the token is printed here; give it with --token or TETHER_TOKEN)."""

import os
import secrets
import subprocess
import sys

token = os.environ.get("TETHER_TOKEN") or secrets.token_urlsafe(16)
workers = [
    ("alice", 8777, ["--labels", "0-3"]),
    ("bob", 8778, ["--labels", "4-6"]),
    ("charlie", 8779, ["--labels", "7-9"]),
    ("testing", 8780, ["--testing"]),
]
# The three that train at once share the cores (see the README: idle torch threads spin).
threads = str(max(1, (os.cpu_count() or 1) // 3))
processes = [
    subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tether.cli",
            "worker",
            "--id",
            name,
            "--port",
            str(port),
            "--dataset",
            "mnist",
            *extra,
        ],
        env=dict(
            os.environ,
            TETHER_TOKEN=token,
            **({} if name == "testing" else {"OMP_NUM_THREADS": threads}),
        ),
    )
    for name, port, extra in workers
]
print(f"access token: {token}", flush=True)
try:
    for process in processes:
        process.wait()
except KeyboardInterrupt:
    for process in processes:
        process.terminate()

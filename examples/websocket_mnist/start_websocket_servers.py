"""Start the tutorial's four workers, as its start_websocket_servers.py did, and keep them up
until Ctrl-C; then train with the `tether train` command this prints (the token is in it).

Run: python examples/websocket_mnist/start_websocket_servers.py [--base-port 8777]

alice listens on --base-port, bob, charlie and testing on the three ports after it: by default
the tutorial's 8777-8780, which examples/websocket_mnist/federation.toml names, so that
    tether train --federation examples/websocket_mnist/federation.toml --token TOKEN
works too. `--base-port 0` takes four free ports instead (when 8777-8780 are in use).
"""

import argparse
import os
import re
import secrets
import subprocess
import sys

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument(
    "--base-port",
    "--base_port",
    type=int,
    default=8777,
    help="alice's port; bob, charlie and testing take the next three (0: free ports; "
    "default 8777, the tutorial's)",
)
args = parser.parse_args()

token = os.environ.get("TETHER_TOKEN") or secrets.token_urlsafe(16)
workers = [
    ("alice", ["--labels", "0-3"]),
    ("bob", ["--labels", "4-6"]),
    ("charlie", ["--labels", "7-9"]),
    ("testing", ["--testing"]),
]
# The three that train at once share the cores (see the README: idle torch threads spin).
threads = str(max(1, (os.cpu_count() or 1) // 3))
processes = [
    subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tether",
            "worker",
            "--id",
            name,
            "--port",
            str(args.base_port + i if args.base_port else 0),
            "--dataset",
            "mnist",
            *extra,
        ],
        env=dict(
            os.environ,
            TETHER_TOKEN=token,
            **({} if name == "testing" else {"OMP_NUM_THREADS": threads}),
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    for i, (name, extra) in enumerate(workers)
]
try:
    urls = {}
    for (name, _), process in zip(workers, processes):
        for line in process.stdout:  # what the worker says until it listens (then nothing)
            print(line, end="")
            found = re.search(r"listening on (\S+)", line)
            if found:
                urls[name] = found.group(1)
                break
        else:
            sys.exit(f"worker {name} did not start (exit status {process.wait()})")
    command = " ".join(f"--worker {name}={urls[name]}" for name, _ in workers[:3])
    print(
        f"\nworkers ready; train with:\n  tether train {command} "
        f"--evaluator testing={urls['testing']} --token {token}\n(Ctrl-C stops them)",
        flush=True,
    )
    for process in processes:
        process.wait()
except KeyboardInterrupt:
    pass
finally:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait()

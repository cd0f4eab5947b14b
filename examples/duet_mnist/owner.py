"""The data owner's half of the Duet MNIST tutorial: publish MNIST, answer requests.

    tether network &                     # the rendezvous service, on this machine
    python owner.py                      # prints a session id for the scientist
    python scientist.py <session id>     # prints a client id: type it in here

The owner's data never leaves: the scientist learns whether this machine has CUDA, how many
training images there are, and gets the model they trained, because the handlers below
accept those requests (each handler says what it accepts: a bool, an int, float32 weights of
SyNet's size); the training loss they ask for is denied (and shown here instead).
"""

import argparse

import torch

import tether as sy
from tether import datasets, transforms

SYNET_WEIGHTS = 1_199_882  # the tutorial's SyNet: what the "model" request may carry at most


def serve(duet, data_root=None):
    """Publish the training set and add the tutorial's handlers."""
    local_transforms = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(0.1307, 0.3081)]
    )
    train_data = datasets.MNIST(data_root, train=True, transform=local_transforms)
    train_data.send(
        duet,
        pointable=True,
        tags=["mnist-train"],
        description="MNIST training images (1x28x28, normalized) and labels",
    )
    print(duet.store.pandas)

    # The scientist names a request, so an accept handler says what it accepts under that
    # name: a request that does not fit waits for you (it is not denied). `print(duet.requests)`
    # shows each one's type, dtype, size, digest and provenance.
    duet.requests.add_handler(name="cuda_is_available", action="accept", max_elements=1, dtype=bool)
    duet.requests.add_handler(
        name="loss",
        action="deny",
        timeout_secs=-1,  # no timeout
        print_local=True,  # print the result in your notebook
    )
    duet.requests.add_handler(name="train_size", action="accept", max_elements=1, dtype=int)
    duet.requests.add_handler(
        name="model",
        action="accept",
        dtype=torch.float32,
        max_elements=SYNET_WEIGHTS,  # a model's weights, not a copy of the 47M pixels
    )


def report(duet):
    """What was asked for and what was decided: the audit log."""
    print(duet.requests.pandas[["id", "name", "reason", "status"]].to_string(index=False))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", help="the tether network service (default: this machine)")
    parser.add_argument("--data", default=None, help="MNIST folder (default: tether's sample)")
    parser.add_argument(
        "--no-confirm",
        action="store_true",
        help="let the first scientist in without asking for their client id",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600,
        help="seconds to serve before giving up on the scientist",
    )
    cli = parser.parse_args(argv)
    duet = sy.launch_duet(network_url=cli.network, confirm=not cli.no_confirm)
    with duet:
        serve(duet, cli.data)
        if not duet.wait(cli.timeout):
            print(f"the scientist is still connected after {cli.timeout:g} s: closing")
        report(duet)


if __name__ == "__main__":
    main()

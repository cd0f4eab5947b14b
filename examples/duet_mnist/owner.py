"""The data owner's half of the Duet MNIST tutorial: publish MNIST, answer requests.

    tether network &                     # the rendezvous service, on this machine
    python owner.py                      # prints a session id for the scientist
    python scientist.py <session id>     # prints a client id: type it in here

The owner's data never leaves: the scientist learns whether this machine has CUDA, how many
training images there are, and gets the model they trained, because the handlers below
accept those requests; the training loss they ask for is denied (and shown here instead).
"""

import argparse

import tether as sy
from tether import datasets, transforms


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

    duet.requests.add_handler(name="cuda_is_available", action="accept")
    duet.requests.add_handler(
        name="loss",
        action="deny",
        timeout_secs=-1,  # no timeout
        print_local=True,  # print the result in your notebook
    )
    duet.requests.add_handler(name="train_size", action="accept")
    duet.requests.add_handler(name="model", action="accept")


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

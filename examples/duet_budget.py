"""Duet with a privacy budget, in one process: the owner publishes the MNIST sample's labels
and pixel means, grants the scientist ε = 1, and the scientist releases a DP label histogram
and mean brightness until the budget says no. Both sides meet over a loopback websocket.

    python examples/duet_budget.py
"""

import torch

import tether as sy
from tether.datasets import MNIST
from tether.duet.session import start_duet


def main() -> None:
    sample = MNIST(train=True)  # the 5,000 images shipped inside tether
    images, labels = sample.data, sample.targets
    brightness = images.float().mean(dim=(1, 2)) / 255  # one value per image, in [0, 1]
    owner = start_duet(loopback=True, confirm=False)
    try:
        owner.publish((brightness, labels), tags=["mnist"], description="brightness, label")
        scientist = sy.join_duet(loopback=True, timeout=30)
        owner.grant(epsilon=1.0, delta=1e-6)

        mnist = scientist.store["mnist"]
        print("budget:", scientist.budget)
        histogram = mnist[1].publish(
            "histogram", bounds=(0, 9), bins=10, mechanism="laplace", epsilon=0.5
        )
        exact = torch.histc(labels.double(), bins=10, min=0, max=9)
        print("label counts, DP:   ", [round(v) for v in histogram.tolist()])
        print("label counts, exact:", [round(v) for v in exact.tolist()])
        mean = mnist[0].publish("mean", bounds=(0, 1), sigma=20.0, reason="mean brightness")
        print(f"mean brightness, DP {mean.item():.4f}, exact {brightness.mean().item():.4f}")
        print("budget:", scientist.budget)
        try:
            mnist[0].publish("sum", bounds=(0, 1), mechanism="laplace", epsilon=0.5)
        except sy.RemoteError as refused:
            print("refused:", refused)
        print(owner.budgets)  # the owner's view: every grant and its spend
        print(owner.requests.pandas[["name", "reason", "status"]].to_string())
        scientist.close()
    finally:
        owner.close()


if __name__ == "__main__":
    main()

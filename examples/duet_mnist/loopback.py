"""The whole Duet MNIST tutorial in one process, with no service: the owner (owner.py) runs
in a thread, the scientist (scientist.py) in the main thread, and they meet over a loopback
websocket. `--compare-local` then trains the same model on the same data in plain PyTorch,
with the same seed and batch order, and prints both test accuracies.

    python loopback.py --epochs 1 --compare-local
"""

import copy
import sys
import threading
from pathlib import Path

import torch

import tether as sy
from tether import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parent))
import owner
import scientist


def run_owner():
    with sy.launch_duet(loopback=True) as duet:
        owner.serve(duet)
        duet.wait(3600)
        owner.report(duet)


def train_locally(model, args):
    """The tutorial's training, in plain PyTorch, with the remote run's seed and order."""
    local_transforms = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(0.1307, 0.3081)]
    )
    train_data = datasets.MNIST(args["data"], train=True, transform=local_transforms)
    torch.manual_seed(args["seed"])
    optimizer = torch.optim.Adadelta(model.parameters(), lr=args["lr"])
    loader = torch.utils.data.DataLoader(train_data, batch_size=args["batch_size"], shuffle=True)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=args["gamma"])
    test_data = datasets.MNIST(args["data"], train=False, transform=local_transforms)
    test_loader = torch.utils.data.DataLoader(test_data, args["test_batch_size"])
    for _ in range(args["epochs"]):
        model.train()
        for batch_idx, (data, target) in enumerate(loader):
            optimizer.zero_grad()
            loss = torch.nn.functional.nll_loss(model(data), target)
            loss.backward()
            optimizer.step()
            if args["limit"] and batch_idx + 1 >= args["limit"]:
                break
        accuracy, _ = scientist.test_local(model, test_loader, len(test_data), args)
        scheduler.step()
    return accuracy


def main():
    compare = "--compare-local" in sys.argv
    _, args = scientist.tutorial_args([a for a in sys.argv[1:] if a != "--compare-local"])
    owner_thread = threading.Thread(target=run_owner, daemon=True)
    owner_thread.start()
    with sy.join_duet(loopback=True) as duet:
        accuracies, initial_model = scientist.main(duet, args)
        baseline = copy.deepcopy(initial_model)
    owner_thread.join(60)
    if compare:
        local = train_locally(baseline, args)
        print(
            f"test accuracy after {args['epochs']} epoch(s): duet {100 * accuracies[-1]:.2f}% "
            f"local {100 * local:.2f}% (difference {100 * (accuracies[-1] - local):+.2f} "
            "points)"
        )


if __name__ == "__main__":
    main()

"""What one training step gives away, and what the worker owner's DP-SGD leaves of it.

A worker holds one MNIST image and runs one delegated `fit` step at batch 1, as a coordinator
asks; the coordinator reads the step's gradient off the weights it sent and got back. Without
DP, the analytic first-layer inversion (the 784-500-10 MLP) and iDLG's gradient matching (LeNet
with sigmoids) give the image back, and its label. With the owner's DP (noise 1.0, clip 1.0:
ε = 4.73 at δ = 1e-5 for this one step) they give noise. Then a hundred such steps measure
the label attack against ε.

Writes a PNG grid, originals beside reconstructions (default privacy_attack.png).

Run: python examples/privacy_attack.py [--images 5] [--trials 100] [--out privacy_attack.png]
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from tether.datasets import MNIST, materialize
from tether.datasets.mnist import MEAN, STD
from tether.federated.delegated import modelspec
from tether.federated.delegated.training import fit
from tether.privacy.attacks import idlg, infer_label, invert_linear, step_gradients
from tether.privacy.attacks.models import LeNet, mlp, pixels
from tether.privacy.dp import OwnerDP
from tether.transforms import Compose, Normalize, ToTensor

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--images", type=int, default=5, help="images shown in the grid")
parser.add_argument("--trials", type=int, default=100, help="defended steps for the label attack")
parser.add_argument("--iterations", type=int, default=200, help="L-BFGS iterations of iDLG")
parser.add_argument("--out", default="privacy_attack.png", help="where to write the grid")
args = parser.parse_args()

torch.set_num_threads(1)
transform = Compose([ToTensor(), Normalize((MEAN,), (STD,))])
data, targets = materialize(MNIST(root=None, train=True, transform=transform))
LR = 0.1
ONE_STEP = {"batch_size": 1, "max_batches": 1, "shuffle": False, "optimizer_args": {"lr": LR}}
owner = OwnerDP(noise=1.0, clip=1.0, max_epsilon=10.0, delta=1e-5)  # each image's own budget

torch.manual_seed(0)
mlp_model, lenet = mlp(), LeNet()
mlp_spec, lenet_spec = modelspec.describe(mlp_model), modelspec.describe(lenet)


def one_step(spec, i, privacy):
    """The gradient of one `fit` step on a worker holding image i, as the coordinator sees it."""
    result = fit(
        spec, data[i : i + 1].clone(), targets[i : i + 1].clone(), ONE_STEP, privacy=privacy
    )
    return step_gradients(spec["state"], result["weights"], LR), result.get("privacy")


def mse(a, b):
    return float(((a - b) ** 2).mean())


rows = {
    "private image": [],
    "analytic, no DP": [],
    "analytic, DP": [],
    "iDLG, no DP": [],
    "iDLG, DP": [],
}
for i in range(args.images):
    original = pixels(data[i])
    rows["private image"].append((original, f"label {int(targets[i])}"))
    for defended in (False, True):
        privacy = owner if defended else None
        tag = "DP" if defended else "no DP"
        gradients, _ = one_step(mlp_spec, i, privacy)
        found = pixels(invert_linear(gradients["1.weight"], gradients["1.bias"]))
        label = infer_label(gradients["3.weight"])
        rows[f"analytic, {tag}"].append((found, f"MSE {mse(found, original):.1e}, label {label}"))
        gradients, _ = one_step(lenet_spec, i, privacy)
        found = idlg(
            lenet, gradients, (1, 28, 28), last_layer="body.7.weight", iterations=args.iterations
        )
        rows[f"iDLG, {tag}"].append(
            (
                pixels(found.input),
                f"MSE {mse(pixels(found.input), original):.1e}, label {found.label}",
            )
        )
    print(
        f"image {i} (label {int(targets[i])}): "
        + "; ".join(
            f"{name}: {cells[-1][1]}" for name, cells in rows.items() if name != "private image"
        )
    )

fig, axes = plt.subplots(
    len(rows), args.images, figsize=(2.1 * args.images, 2.3 * len(rows)), squeeze=False
)
for r, (name, cells) in enumerate(rows.items()):
    for c, (image, caption) in enumerate(cells):
        ax = axes[r][c]
        ax.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(caption, fontsize=7)
        if c == 0:
            ax.set_ylabel(name, fontsize=9)
fig.suptitle(
    "One fit step at batch 1: without DP, and with the owner's DP (noise 1, clip 1, ε 4.73)",
    fontsize=10,
)
fig.tight_layout()
fig.savefig(args.out, dpi=110)
print(f"wrote {args.out}")

mean_image = pixels(data.mean(0))
errors, closer, labels, spent = [], 0, 0, None
for t in range(args.trials):
    i = 1000 + t
    gradients, spent = one_step(mlp_spec, i, owner)
    found = pixels(invert_linear(gradients["1.weight"], gradients["1.bias"]))
    errors.append(mse(found, pixels(data[i])))
    closer += errors[-1] < mse(mean_image, pixels(data[i]))
    labels += infer_label(gradients["3.weight"]) == int(targets[i])
print(
    f"with DP, {args.trials} one-step trials at ε = {spent['epsilon']:.3f} (δ = {spent['delta']:g}): "
    f"reconstruction MSE mean {sum(errors) / len(errors):.3f} (min {min(errors):.3f}; the mean "
    f"image scores {mse(mean_image.expand(len(data), 28, 28), torch.stack([pixels(x) for x in data])):.3f}), "
    f"closer than the mean image in {closer}; label inferred in {labels} of {args.trials} (chance 10%)"
)

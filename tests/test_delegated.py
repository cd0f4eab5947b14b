"""Delegated training: `fit` and `evaluate` run on a worker as allowlisted ops, and give what
plain PyTorch gives doing the same work on the same data."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tether as sy
from tether import errors
from tether.cli.demo import mnist_tensors
from tether.errors import RemoteError
from tether.federated.coordinator import FederationError
from tether.federated.delegated.modelspec import describe, with_state
from tether.federated.delegated.remote import dataset_pointers, remote_evaluate, remote_fit
from tether.federated.delegated.training import EvalConfig, TrainConfig, canonical, evaluate, fit
from tether.federated.models import Net, mlp
from tether.federated.strategies import FedAvg, Update, weighted_average
from tether.node import Limits
from tether.remote.client import ref


@pytest.fixture(scope="module")
def sample() -> tuple[torch.Tensor, torch.Tensor]:
    """alice's part of the embedded MNIST sample: digits 0-3, as `tether worker` serves it."""
    data, targets = mnist_tensors(train=True)
    keep = (targets < 4).nonzero().flatten()
    return data[keep].contiguous(), targets[keep].contiguous()


@pytest.fixture(scope="module")
def test_set() -> tuple[torch.Tensor, torch.Tensor]:
    data, targets = mnist_tensors(train=False)
    return data[:2000].contiguous(), targets[:2000].contiguous()


@pytest.fixture
def alice(sample):
    worker = sy.VirtualWorker(id="alice")
    worker.publish("mnist", sample)
    yield worker
    worker.close()


def plain_fit(model: torch.nn.Module, data, targets, config: TrainConfig) -> list[float]:
    """What fit() does, written out in plain PyTorch."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(config.seed))
    optimizer = torch.optim.SGD(model.parameters(), **config.optimizer_args)
    losses = []
    for b in range(config.max_batches):
        index = order[b * config.batch_size : (b + 1) * config.batch_size]
        optimizer.zero_grad()
        loss = F.nll_loss(model(data[index]), targets[index])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_fit_on_a_worker_equals_plain_pytorch(alice, sample) -> None:
    torch.manual_seed(0)
    model = Net()
    spec = describe(model)
    config = TrainConfig(batch_size=32, max_batches=10, optimizer_args={"lr": 0.1}, seed=7)
    answer = remote_fit(alice.client, dataset_pointers(alice.client, "mnist"), spec, config)
    losses = plain_fit(model, *sample, config)
    assert answer["samples"] == 320 and answer["batches"] == 10
    assert answer["losses"] == pytest.approx(losses, abs=1e-5)
    for key, value in model.state_dict().items():
        assert torch.allclose(answer["weights"][key], value, atol=1e-5), key
    assert answer["epoch_losses"] == pytest.approx([sum(losses) / 10])


def test_fit_is_deterministic_and_leaves_the_global_rng_alone(sample) -> None:
    spec = describe(
        torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(784, 64),
            torch.nn.Dropout(0.5),
            torch.nn.Linear(64, 10),
            torch.nn.LogSoftmax(dim=1),
        )
    )
    config = {"max_batches": 5, "seed": 3}
    before = torch.random.get_rng_state()
    first, second = fit(spec, *sample, config), fit(spec, *sample, config)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert first["losses"] == second["losses"]
    for key in first["weights"]:
        assert torch.equal(first["weights"][key], second["weights"][key])
    other = fit(spec, *sample, {"max_batches": 5, "seed": 4})
    assert other["losses"] != first["losses"]


def test_epochs_and_drop_last(sample) -> None:
    data, targets = sample[0][:100], sample[1][:100]
    answer = fit(describe(mlp()), data, targets, {"epochs": 3, "batch_size": 32, "drop_last": True})
    assert answer["batches"] == 9 and answer["samples"] == 288
    assert len(answer["epoch_losses"]) == 3


def test_batches_are_cut_in_one_memory_layout(sample) -> None:
    """A 1-channel NHWC tensor passes is_contiguous() but is not NCHW; fit trains on the
    canonical copy, with the same result."""
    data, targets = sample
    nhwc = torch.empty(len(data), 28, 28, 1).copy_(data.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert nhwc.is_contiguous() and nhwc.stride() != data.stride()
    assert canonical(nhwc).stride() == data.stride()
    assert canonical(data) is data
    spec = describe(Net())
    config = {"max_batches": 2, "seed": 1}
    assert fit(spec, nhwc, targets, config)["losses"] == fit(spec, data, targets, config)["losses"]


def test_evaluate_equals_plain_pytorch(test_set) -> None:
    torch.manual_seed(0)
    model = Net().eval()
    answer = evaluate(describe(model), *test_set, {"batch_size": 300})
    with torch.no_grad():
        output = model(test_set[0])
    guesses = output.argmax(1)
    assert answer["correct"] == int((guesses == test_set[1]).sum())
    assert answer["samples"] == 2000 and answer["accuracy"] == answer["correct"] / 2000
    assert answer["loss"] == pytest.approx(F.nll_loss(output, test_set[1]).item(), rel=1e-5)
    assert answer["predicted"] == torch.bincount(guesses, minlength=10).tolist()


def test_evaluations_run_on_the_evaluator(test_set) -> None:
    testing = sy.VirtualWorker(id="testing")
    testing.publish("mnist_testing", test_set)
    torch.manual_seed(0)
    spec = describe(Net())
    zeros = with_state(spec, {k: torch.zeros_like(v) for k, v in spec["state"].items()})
    results = remote_evaluate(
        testing.client,
        dataset_pointers(testing.client, "mnist_testing"),
        {"a": spec, "b": zeros},
        EvalConfig(),
    )
    assert results["a"] == {**evaluate(spec, *test_set), "seconds": results["a"]["seconds"]}
    assert results["b"]["predicted"][0] == 2000  # all-zero logits: argmax is label 0


@pytest.mark.parametrize(
    "config, message",
    [
        ({"optimizer": "Adamm"}, "unknown optimizer 'Adamm'"),
        ({"optimizer": "os.system"}, "unknown optimizer 'os.system'"),
        ({"loss": "nll_los"}, "unknown loss 'nll_los'"),
        ({"loss": "torch.load"}, "unknown loss 'torch.load'"),
        ({"optimizer_args": {"lr": 0.1, "momentun": 0.9}}, "SGD takes no argument 'momentun'"),
        ({"optimizer_args": {"lr": "0.1; import os"}}, "must be a number"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"epochs": 2, "shuffled": True}, "unknown training config keys \\['shuffled'\\]"),
    ],
)
def test_a_worker_refuses_a_bad_config_by_name(alice, config, message) -> None:
    spec = describe(mlp())
    client = alice.client
    data, targets = dataset_pointers(client, "mnist")
    result = client.call("tether.federated.fit", [spec, ref(data), ref(targets), config])
    with pytest.raises(RemoteError, match=message):
        result.get()


def test_a_worker_refuses_an_unknown_layer_by_name(alice) -> None:
    spec = describe(mlp())
    spec["layers"]["1"]["type"] = "torch.nn.Linearr"
    data, targets = dataset_pointers(alice.client, "mnist")
    with pytest.raises(sy.NotAllowedError, match=r"'torch\.nn\.Linearr' is refused"):
        remote_fit(alice.client, (data, targets), spec, TrainConfig(max_batches=1))


def test_a_worker_builds_delegated_models_within_its_own_element_limit(sample) -> None:
    """fit and evaluate get the node's limit, not the library default, and a client cannot
    raise it by passing its own."""
    worker = sy.VirtualWorker(id="small", limits=Limits(max_elements=10_000))
    worker.publish("mnist", sample)
    data, targets = dataset_pointers(worker.client, "mnist")
    big = describe(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 16)))
    for op in ("tether.federated.fit", "tether.federated.evaluate"):
        result = worker.client.call(op, [big, ref(data), ref(targets), {}])
        with pytest.raises(errors.LimitError, match=r"12,544 elements; this node allows 10,000"):
            result.get()
        result = worker.client.call(op, [big, ref(data), ref(targets), {}], {"max_elements": 10**9})
        with pytest.raises(errors.NotAllowedError, match="max_elements is this node's own limit"):
            result.get()
    small = describe(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)))
    answer = worker.client.call(
        "tether.federated.fit", [small, ref(data), ref(targets), {"max_batches": 1}]
    ).get()
    assert answer["batches"] == 1  # 7,850 elements fit, and the worker kept serving
    worker.close()


def test_an_unknown_dataset_key_is_named(alice) -> None:
    with pytest.raises(FederationError, match=r"worker 'alice' has no dataset 'mnst': .*mnist"):
        dataset_pointers(alice.client, "mnst")


def test_fedavg_weights_by_samples() -> None:
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(10)}
    b = {"w": torch.tensor([4.0, 8.0]), "n": torch.tensor(20)}
    merged = FedAvg().aggregate(1, [Update("a", a, 100), Update("b", b, 300)], a)
    assert torch.allclose(merged["w"], torch.tensor([3.25, 6.5]))
    assert merged["n"].dtype == torch.int64 and int(merged["n"]) == 18  # 17.5 rounds to even
    assert torch.equal(weighted_average([a, b], [1, 1])["w"], torch.tensor([2.5, 5.0]))
    with pytest.raises(ValueError, match="keys"):
        weighted_average([a, {"w": a["w"]}], [1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        weighted_average([a, b], [0, 0])


def test_fit_and_evaluate_are_registered_from_above() -> None:
    """The federated package adds its ops to the table (the node imports no feature), and
    `register` keeps a feature inside its own namespace and off a taken name."""
    from tether.ops import ALLOWLIST, register

    assert ALLOWLIST["tether.federated.fit"].fn is fit
    assert ALLOWLIST["tether.federated.evaluate"].node_limited
    assert register("tether.federated.fit", fit, node_limited=True).fn is fit  # a re-import
    for path in ("torch.x", "tether.__x", "builtins.exec", "operator.x"):
        with pytest.raises(ValueError, match=r"tether\.<feature>"):
            register(path, fit)
    with pytest.raises(ValueError, match="already in the op table"):
        register("tether.federated.fit", evaluate)

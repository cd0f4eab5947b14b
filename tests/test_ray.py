"""The simulation on Ray: a local Ray instance on 127.0.0.1 trains the same clients, with the
same seeds, as the in-process backend, and the global model comes out the same."""

from __future__ import annotations

import pytest
import torch

from tether import cli, datasets, transforms
from tether.datasets.base import materialize
from tether.federated.models import mlp
from tether.federated.simulation import SequentialBackend, Simulation

ray = pytest.importorskip(
    "ray", reason='Ray is an optional extra: pip install -e ".[ray]" (CI installs it)'
)
from tether.federated.simulation.ray_backend import RayBackend  # noqa: E402


def _mnist(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    t = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    return materialize(datasets.MNIST(None, train=train, transform=t))


def _run(backend):
    torch.manual_seed(0)
    return Simulation(
        mlp(),
        _mnist(train=True),
        partition="iid:20",
        config={"optimizer_args": {"lr": 0.1}, "batch_size": 32},
        rounds=2,
        test=_mnist(train=False),
        eval_every=2,
        seed=3,
        backend=backend,
    ).run()


def test_ray_backend_trains_the_clients_as_in_process():
    local = _run(SequentialBackend())
    backend = RayBackend(num_cpus=2, actors=2)
    on_ray = _run(backend)
    assert not ray.is_initialized(), "the backend shuts down the Ray instance it started"
    assert backend._workers == []
    # the same 20 clients x 2 rounds: weights equal up to float rounding (the actors run
    # one torch thread each), so the same accuracy on the 10,000 test images
    for key, value in local.state.items():
        torch.testing.assert_close(on_ray.state[key], value, rtol=0, atol=1e-5)
    acc_local, acc_ray = local.history[-1]["accuracy"], on_ray.history[-1]["accuracy"]
    assert acc_local > 0.7, f"2 rounds over the sample should learn, got {acc_local:.3f}"
    assert abs(acc_ray - acc_local) < 0.005
    assert [h["samples"] for h in on_ray.history] == [h["samples"] for h in local.history]
    assert [h["clients"] for h in on_ray.history] == [20, 20]


def test_ray_backend_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="actors"):
        RayBackend(actors=0)
    with pytest.raises(ValueError, match="num_cpus"):
        RayBackend("127.0.0.1:6379", num_cpus=2)
    with pytest.raises(RuntimeError, match="before start"):
        next(iter(RayBackend().fit_clients({}, [])))


def test_tether_simulate_selects_the_ray_backend():
    from tether.cli.simulate import _backend

    backend = _backend("ray", "127.0.0.1:6379")
    assert isinstance(backend, RayBackend) and backend.address == "127.0.0.1:6379"
    assert isinstance(_backend("sequential", None), SequentialBackend)


def test_tether_simulate_names_a_ray_address_without_the_ray_backend(capsys):
    assert cli.main(["simulate", "--ray-address", "127.0.0.1:6379", "--no-progress"]) == 1
    assert "--ray-address needs --backend ray" in capsys.readouterr().err

"""Models as data: describe() and build() give back the same model, and a hostile spec cannot
make a worker run anything outside the allowlist, or allocate past its limits."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tether as sy
from tether.errors import LimitError, NotAllowedError, RemoteError
from tether.federated.delegated.modelspec import build, describe, structure, with_state
from tether.federated.models import Net, mlp
from tether.remote.client import ref
from tether.wire import Call, decode, encode


class Custom(nn.Module):
    """A user's own module: allowlisted layers, a custom forward, its own parameter and buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Dropout(0.2), nn.BatchNorm1d(32)
        )
        self.head = nn.Linear(32, 10, bias=False)
        self.scale = nn.Parameter(torch.full((10,), 2.0))
        self.register_buffer("shift", torch.linspace(-1, 1, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        h = torch.flatten(h, 1) + h.shape[0] * 0.0
        return F.log_softmax(self.head(h) * self.scale + self.shift, dim=-1)


def through_wire(spec: dict) -> dict:
    """The spec as a worker receives it: encoded and decoded by the real codec."""
    return decode(encode([Call("tether.federated.fit", [spec], {}, 1)]))[0].args[0]


@pytest.mark.parametrize("make", [Net, mlp, Custom], ids=["cnn", "mlp", "custom"])
def test_rebuilt_model_computes_the_same(make) -> None:
    torch.manual_seed(0)
    model = make().eval()
    rebuilt = build(through_wire(describe(model))).eval()
    x = torch.randn(16, 1, 28, 28)
    assert torch.equal(rebuilt(x), model(x))
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


def test_weights_keep_their_dtype() -> None:
    model = nn.Sequential(nn.Linear(4, 3).double(), nn.Linear(3, 2, dtype=torch.float64))
    spec = describe(model)
    assert spec["layers"]["0"]["args"]["dtype"] == torch.float64
    rebuilt = build(through_wire(spec))
    assert rebuilt.state_dict()["1.weight"].dtype == torch.float64
    x = torch.randn(5, 4, dtype=torch.float64)
    assert torch.equal(rebuilt(x), model(x))


def test_rebuilt_model_trains_the_same() -> None:
    """Gradients flow through the interpreter as through the original forward."""
    torch.manual_seed(0)
    model = Custom()
    rebuilt = build(describe(model))
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for m in (model, rebuilt):
        torch.manual_seed(1)  # the same dropout mask
        F.nll_loss(m(x), y).backward()
    for (name, p), q in zip(model.named_parameters(), rebuilt.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name


def test_tutorial_cnn_spec_is_plain_data() -> None:
    spec = describe(Net())
    assert spec["layers"]["conv1"] == {
        "type": "torch.nn.Conv2d",
        "args": {
            "in_channels": 1,
            "out_channels": 20,
            "kernel_size": (5, 5),
            "stride": (1, 1),
            "padding": (0, 0),
            "dilation": (1, 1),
            "groups": 1,
            "bias": True,
            "padding_mode": "zeros",
        },
    }
    assert spec["layers"]["fc1"]["args"] == {"in_features": 800, "out_features": 500, "bias": True}
    targets = [n["target"] for n in spec["graph"] if n["op"].startswith("call_")]
    assert "torch.nn.functional.max_pool2d" in targets and "torch.Tensor.view" in targets
    assert set(structure(spec)) == {"version", "layers", "attributes", "graph"}
    new = {k: torch.zeros_like(v) for k, v in spec["state"].items()}
    assert torch.count_nonzero(build(with_state(spec, new)).fc1.weight) == 0


def test_describe_refuses_what_no_worker_would_run() -> None:
    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(4, 4)

        def forward(self, x):
            return self.rnn(x)[0]

    class Special(nn.Module):
        def forward(self, x):
            return torch.special.erfcx(x)

    with pytest.raises(NotAllowedError, match=r"torch\.nn\.LSTM"):
        describe(Recurrent())
    with pytest.raises(NotAllowedError, match="erfcx"):
        describe(Special())


# ---- hostile specs --------------------------------------------------------------------------


@pytest.fixture
def spec() -> dict:
    torch.manual_seed(0)
    return describe(mlp())


def previous(spec: dict, index: int) -> dict:
    """A reference to the node before `index` (a valid input for it)."""
    return {"node": spec["graph"][index - 1]["name"]}


def with_node(spec: dict, index: int, **changes) -> dict:
    hostile = copy.deepcopy(spec)
    hostile["graph"][index].update(changes)
    return hostile


@pytest.mark.parametrize(
    "target",
    [
        "builtins.eval",
        "builtins.exec",
        "builtins.__import__",
        "os.system",
        "subprocess.Popen",
        "torch.load",
        "torch.Tensor.__reduce_ex__",
        "torch.nn.Module.__init__",
        "torch.nn.Linear",
        "torch.nn.Module.load_state_dict",
        "torch.optim.SGD",
        "tether.federated.fit",
        "torch.autograd.grad",
        "torch.nn.functional.__dict__",
        42,
        None,
    ],
)
def test_function_targets_outside_the_forward_allowlist_are_refused(spec, target) -> None:
    with pytest.raises(NotAllowedError, match="refused"):
        build(with_node(spec, 2, op="call_function", target=target))


@pytest.mark.parametrize(
    "target", ["torch.Tensor.__class__", "builtins.eval", "os.system", "torch.nn.Module.state_dict"]
)
def test_method_targets_must_be_allowlisted_tensor_methods(spec, target) -> None:
    with pytest.raises(NotAllowedError, match="refused"):
        build(with_node(spec, 2, op="call_method", target=target))


@pytest.mark.parametrize(
    "layer_type",
    [
        "subprocess.Popen",
        "os.system",
        "builtins.eval",
        "torch.nn.functional.relu",
        "torch.nn.Sequential",
        "torch.nn.Module",
        "torch.nn.modules.module.Module",
        "torch.nn.Linear.__init__",
        "torch.optim.SGD",
    ],
)
def test_layer_types_outside_the_allowlist_are_refused(spec, layer_type) -> None:
    hostile = copy.deepcopy(spec)
    hostile["layers"]["1"]["type"] = layer_type
    with pytest.raises(NotAllowedError, match="refused"):
        build(hostile)


def test_unknown_graph_ops_and_dunder_names_are_refused(spec) -> None:
    with pytest.raises(NotAllowedError, match="op 'exec'"):
        build(with_node(spec, 2, op="exec"))
    with pytest.raises(NotAllowedError, match="__class__"):
        build(with_node(spec, 2, name="__class__"))
    hostile = copy.deepcopy(spec)
    hostile["graph"][2]["kwargs"] = {"__globals__": 1}
    with pytest.raises(NotAllowedError, match="__globals__"):
        build(hostile)
    hostile = copy.deepcopy(spec)
    hostile["layers"]["__class__"] = hostile["layers"].pop("1")
    with pytest.raises(NotAllowedError, match="__class__"):
        build(hostile)


def test_strings_meant_as_code_stay_strings(spec, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"
    hostile = copy.deepcopy(spec)
    hostile["layers"]["1"] = {
        "type": "torch.nn.Conv2d",
        "args": {"in_channels": 1, "out_channels": 1, "kernel_size": 3, "padding_mode": code},
    }
    with pytest.raises(ValueError, match="padding_mode"):
        build(hostile)
    hostile = with_node(spec, 2, args=(previous(spec, 2), code))
    with pytest.raises(TypeError):  # relu(x, inplace=<str>) fails; nothing runs the string
        build(hostile)(torch.zeros(1, 1, 28, 28))
    assert not marker.exists()


def test_layer_arguments_must_be_plain_and_known(spec) -> None:
    for args, match in [
        ({"in_features": 2, "out_features": 2, "_weight": 1}, "_weight"),
        ({"in_features": 2, "out_features": 2, "device": "meta"}, "device"),
        ({"in_features": 2, "out_features": 2, "evil": 1}, "evil"),
        ({"in_features": torch.ones(2), "out_features": 2}, "plain data"),
    ]:
        hostile = copy.deepcopy(spec)
        hostile["layers"]["1"] = {"type": "torch.nn.Linear", "args": args}
        with pytest.raises(ValueError, match=match):
            build(hostile)


def nest(depth: int) -> list:
    nested: list = [1]
    for _ in range(depth - 1):
        nested = [nested]
    return nested


def test_deeply_nested_arguments_are_refused(spec) -> None:
    with pytest.raises(ValueError, match="nested more than"):
        build(with_node(spec, 2, args=(previous(spec, 2), nest(10_000))))


def test_huge_layers_are_refused_before_allocation(spec) -> None:
    hostile = copy.deepcopy(spec)
    hostile["layers"]["1"] = {
        "type": "torch.nn.Linear",
        "args": {"in_features": 2**20, "out_features": 2**20},
    }
    with pytest.raises(LimitError, match="1,099,511,627,776 elements"):
        build(hostile)
    many = copy.deepcopy(spec)
    many["layers"]["1"] = {
        "type": "torch.nn.Linear",
        "args": {"in_features": 1000, "out_features": 1000},
    }
    many["layers"]["3"] = dict(many["layers"]["1"])
    with pytest.raises(LimitError, match="allows 1,000,000"):
        build(many, max_elements=1_000_000)  # each layer fits, both together do not


def test_graph_ops_are_held_to_the_element_limit(spec) -> None:
    hostile = with_node(
        spec, 2, op="call_function", target="torch.zeros", args=((2**20, 2**20),), kwargs={}
    )
    with pytest.raises(LimitError, match=r"torch\.zeros"):
        build(hostile)(torch.zeros(1, 1, 28, 28))


def test_weights_that_do_not_fit_are_refused(spec) -> None:
    hostile = copy.deepcopy(spec)
    hostile["state"]["1.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="do not fit"):
        build(hostile)
    hostile["state"]["1.weight"] = "rm -rf /"
    with pytest.raises(ValueError, match="not a tensor"):
        build(hostile)


def test_a_worker_refuses_a_hostile_spec_and_keeps_working() -> None:
    worker = sy.VirtualWorker(id="alice")
    worker.publish("mnist", (torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))))
    client = worker.client
    data = client.call("operator.getitem", [ref(client.call("tether.published", ["mnist"])), 0])
    targets = client.call("operator.getitem", [ref(client.call("tether.published", ["mnist"])), 1])
    good = describe(mlp())
    for hostile, match in [
        (with_node(good, 2, target="builtins.eval"), "graph node '_1' calls layer 'builtins.eval'"),
        (with_node(good, 2, args=(previous(good, 2), nest(50))), "an argument is nested more th"),
    ]:
        result = client.call("tether.federated.fit", [hostile, ref(data), ref(targets), {}])
        with pytest.raises(RemoteError, match=f"fit on worker 'alice' failed: ValueError: {match}"):
            result.get()
    answer = client.call(
        "tether.federated.fit", [good, ref(data), ref(targets), {"max_batches": 1}]
    ).get()
    assert answer["batches"] == 1

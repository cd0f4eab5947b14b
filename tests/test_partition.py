"""Partitioners: exact, disjoint, covering, deterministic, and blind to the global RNG."""

import numpy as np
import pytest
import torch

from tether.federated.data.partition import (
    by_label_groups,
    dirichlet,
    format_label_table,
    iid,
    label_counts,
    labels_per_client,
    parse_label_range,
    parse_spec,
    shards,
    with_count,
)


@pytest.fixture(scope="module")
def targets() -> torch.Tensor:
    """5,000 shuffled labels, 500 per digit, like the embedded MNIST sample."""
    labels = torch.arange(10).repeat_interleave(500)
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]


def assert_partition(parts: list[torch.Tensor], n: int) -> None:
    """Parts are int64, disjoint, and together cover every index exactly once."""
    assert all(p.dtype == torch.int64 for p in parts)
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(n))


def test_iid_sizes_coverage_and_order():
    parts = iid(10, 3, seed=4)
    assert [len(p) for p in parts] == [4, 3, 3]
    assert_partition(parts, 10)
    assert all(torch.equal(p, p.sort().values) for p in parts)


def test_iid_determinism_and_seeds():
    assert all(torch.equal(a, b) for a, b in zip(iid(100, 4, 7), iid(100, 4, 7), strict=True))
    assert not torch.equal(iid(100, 4, 7)[0], iid(100, 4, 8)[0])


def test_iid_errors():
    with pytest.raises(ValueError, match=">= 1"):
        iid(10, 0)
    with pytest.raises(ValueError, match="cannot cut 3 samples into 4"):
        iid(3, 4)


def test_by_label_groups_exact(targets):
    groups = [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    parts = by_label_groups(targets, groups)
    assert_partition(parts, len(targets))
    for part, group in zip(parts, groups, strict=True):
        expected = [i for i, t in enumerate(targets.tolist()) if t in group]
        assert part.tolist() == expected  # original order


def test_by_label_groups_leaves_out_unlisted_labels():
    parts = by_label_groups(torch.tensor([0, 1, 2, 1, 0]), [[1], [2]])
    assert [p.tolist() for p in parts] == [[1, 3], [2]]


def test_by_label_groups_errors(targets):
    with pytest.raises(ValueError, match="more than one group"):
        by_label_groups(targets, [[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="empty"):
        by_label_groups(targets, [[0], []])
    with pytest.raises(ValueError, match="no sample"):
        by_label_groups(targets, [[0], [42]])
    with pytest.raises(ValueError, match="integer labels"):
        by_label_groups(torch.rand(5), [[0]])


def distributions(targets, parts) -> torch.Tensor:
    counts = label_counts(targets, parts).double()
    return counts / counts.sum(1, keepdim=True)


def test_dirichlet_large_alpha_is_near_iid(targets):
    parts = dirichlet(targets, 4, alpha=1000.0, seed=0)
    assert_partition(parts, len(targets))
    assert (distributions(targets, parts) - 0.1).abs().max() < 0.03


def test_dirichlet_small_alpha_is_skewed(targets):
    parts = dirichlet(targets, 4, alpha=0.05, seed=0, min_size=10)
    assert_partition(parts, len(targets))
    assert min(len(p) for p in parts) >= 10
    counts = label_counts(targets, parts)
    # Nearly every label lives almost entirely on one worker.
    share_of_main_owner = counts.max(0).values / counts.sum(0)
    assert share_of_main_owner.mean() > 0.8
    # Workers' label distributions are far from the global one (total variation distance).
    assert ((distributions(targets, parts) - 0.1).abs().sum(1) / 2).mean() > 0.5


def test_dirichlet_determinism_and_seeds(targets):
    a, b = dirichlet(targets, 3, 0.5, seed=3), dirichlet(targets, 3, 0.5, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], dirichlet(targets, 3, 0.5, seed=4)[0])


def test_dirichlet_errors(targets):
    with pytest.raises(ValueError, match="alpha"):
        dirichlet(targets, 3, 0.0)
    with pytest.raises(ValueError, match="min_size"):
        dirichlet(targets[:20], 3, 1.0, min_size=10)
    with pytest.raises(ValueError, match=">= 1"):
        dirichlet(targets, 0, 1.0)


def test_shards_give_each_part_its_label_runs(targets):
    parts = shards(targets, 5, 2, seed=0)
    assert_partition(parts, len(targets))
    for part in parts:
        # 10 shards of 500 samples each hold exactly one digit; a part is 2 of them in a row.
        runs = targets[part].view(2, 500)
        assert (runs == runs[:, :1]).all()


def test_shards_uneven_and_deterministic(targets):
    parts = shards(targets, 3, 3, seed=5)
    assert_partition(parts, len(targets))
    assert all(label_counts(targets, [p]).count_nonzero() <= 6 for p in parts)
    again = shards(targets, 3, 3, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(parts, again, strict=True))
    assert any(
        not torch.equal(x, y) for x, y in zip(parts, shards(targets, 3, 3, seed=6), strict=True)
    )


def test_shards_errors(targets):
    with pytest.raises(ValueError, match="shards_per_part"):
        shards(targets, 3, 0)
    with pytest.raises(ValueError, match="cannot cut 4 samples into 6 shards"):
        shards(targets[:4], 3, 2)


def test_partitioners_leave_global_rng_alone(targets):
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    iid(len(targets), 3, seed=1)
    dirichlet(targets, 3, 0.5, seed=1)
    shards(targets, 3, 2, seed=1)
    for spec in (
        "iid:3",
        "dirichlet:3:0.3",
        "shards:4:2",
        "labels:0-4/5-9",
        "labels-per-client:4:2",
    ):
        parse_spec(spec, seed=2)(targets)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:]


def test_parse_label_range():
    assert parse_label_range("0-3") == [0, 1, 2, 3]
    assert parse_label_range("0,2,5") == [0, 2, 5]
    assert parse_label_range(" 7 ") == [7]
    assert parse_label_range("0-2,8") == [0, 1, 2, 8]
    for bad in ("3-1", "a", "1-", "-1", ""):
        with pytest.raises(ValueError):
            parse_label_range(bad)


def test_parse_spec_matches_direct_calls(targets):
    cases = {
        "iid:3": iid(len(targets), 3, 9),
        "labels:0-3/4-6/7-9": by_label_groups(targets, [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]),
        "dirichlet:3:0.5": dirichlet(targets, 3, 0.5, 9),
        "shards:3:2": shards(targets, 3, 2, 9),
    }
    for spec, expected in cases.items():
        got = parse_spec(spec, seed=9)(targets)
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True)), spec


@pytest.mark.parametrize(
    "spec",
    ["", "iid", "iid:x", "iid:0", "iid:3:4", "dirichlet:3", "dirichlet:3:-1", "dirichlet:3:a",
     "shards:3:0", "shards:3", "labels:3-1", "labels:a/b", "split:3"],
)  # fmt: skip
def test_parse_spec_errors(spec):
    with pytest.raises(ValueError, match="bad partition spec"):
        parse_spec(spec)


def test_label_counts_and_table():
    targets = torch.tensor([0, 1, 1, 2, 2, 2])
    parts = [torch.tensor([0, 1]), torch.tensor([2, 3, 4, 5])]
    assert label_counts(targets, parts).tolist() == [[1, 1, 0], [0, 1, 3]]
    table = format_label_table(targets, parts, names=["alice", "bob"])
    assert table == (
        "worker  0  1  2  total\n"
        "alice   1  1  0      2\n"
        "bob     0  1  3      4\n"
        "total   1  2  3      6"
    )
    assert format_label_table(targets, parts).splitlines()[1].startswith("worker0 ")
    with pytest.raises(ValueError, match="names"):
        format_label_table(targets, parts, names=["alice"])


def test_labels_per_client_gives_each_part_k_labels_split_evenly(targets):
    parts = labels_per_client(targets, 10, 2, seed=3)
    counts = label_counts(targets, parts)
    assert ((counts > 0).sum(1) == 2).all()  # exactly two labels each
    assert all(counts[i, i] > 0 for i in range(10))  # part i holds label i
    for label in range(10):  # a label's samples are dealt evenly among its holders
        shares = counts[:, label][counts[:, label] > 0]
        assert int(shares.sum()) == 500 and int(shares.max() - shares.min()) <= 1
    assert_partition(parts, len(targets))  # every label is held: every sample placed once
    assert all(torch.equal(p, p.sort().values) for p in parts)
    again = labels_per_client(targets, 10, 2, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(parts, again, strict=True))
    other = labels_per_client(targets, 10, 2, seed=4)
    assert any(not torch.equal(a, b) for a, b in zip(parts, other, strict=True))


def test_one_label_per_client_is_niid_benchs_hardest_split(targets):
    parts = labels_per_client(targets, 10, 1)
    assert [sorted(set(targets[p].tolist())) for p in parts] == [[i] for i in range(10)]
    assert [len(p) for p in parts] == [500] * 10
    few = labels_per_client(targets, 3, 1)  # labels 3-9 are held by no part: left out
    assert sorted(set(targets[torch.cat(few)].tolist())) == [0, 1, 2]


def test_labels_per_client_errors_and_spec(targets):
    with pytest.raises(ValueError, match="between 1 and 10"):
        labels_per_client(targets, 5, 11)
    with pytest.raises(ValueError, match="got no samples"):
        labels_per_client(targets[:12], 12, 1)
    got = parse_spec("labels-per-client:10:2", seed=5)(targets)
    expected = labels_per_client(targets, 10, 2, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    for bad in ("labels-per-client:10", "labels-per-client:10:0", "labels-per-client:x:2"):
        with pytest.raises(ValueError, match="bad partition spec"):
            parse_spec(bad)
    assert with_count("labels-per-client:2", 10) == "labels-per-client:10:2"
    assert with_count("dirichlet:4:0.5", 10) == "dirichlet:4:0.5"
    assert with_count("iid", 7) == "iid:7"
    assert with_count("labels:0-4/5-9", 7) == "labels:0-4/5-9"

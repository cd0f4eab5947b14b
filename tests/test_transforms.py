"""Compose / ToTensor / Normalize: torchvision's semantics, and batches equal to samples."""

import numpy as np
import pytest
import torch

from tether.transforms import Compose, Normalize, ToTensor


def test_to_tensor_grayscale_array_is_scaled_and_gets_a_channel():
    img = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    out = ToTensor()(img)
    assert out.dtype == torch.float32
    assert out.shape == (1, 2, 2)
    assert torch.equal(out, torch.tensor([[[0.0, 1.0], [0.2, 0.4]]]))


def test_to_tensor_hwc_array_becomes_chw():
    img = np.zeros((2, 3, 3), dtype=np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 255, 51, 0  # one color per channel
    out = ToTensor()(img)
    assert out.shape == (3, 2, 3)
    assert torch.equal(out[0], torch.ones(2, 3))
    assert torch.equal(out[1], torch.full((2, 3), 0.2))
    assert torch.equal(out[2], torch.zeros(2, 3))
    assert out.is_contiguous()


def test_to_tensor_keeps_non_uint8_values_like_torchvision():
    img = np.array([[0.5, 2.0]], dtype=np.float64)
    out = ToTensor()(img)
    assert out.dtype == torch.float64
    assert torch.equal(out, torch.tensor([[[0.5, 2.0]]], dtype=torch.float64))


def test_to_tensor_bool_image_maps_true_to_one():
    out = ToTensor()(np.array([[True, False]]))
    assert torch.equal(out, torch.tensor([[[1.0, 0.0]]]))


def test_to_tensor_accepts_tensors_and_batches():
    t = ToTensor()
    gray = torch.randint(0, 256, (5, 7, 9), dtype=torch.uint8)
    batch = t(gray)
    assert batch.shape == (5, 1, 7, 9)
    assert torch.equal(batch, torch.stack([t(x) for x in gray]))
    assert torch.equal(t(gray[0]), t(gray[0].numpy()))

    color = torch.randint(0, 256, (4, 6, 8, 3), dtype=torch.uint8)
    batch = t(color)
    assert batch.shape == (4, 3, 6, 8)
    assert torch.equal(batch, torch.stack([t(x) for x in color]))
    assert torch.equal(t(color[0]), t(color[0].numpy()))


def test_to_tensor_rejects_other_shapes():
    with pytest.raises(ValueError, match="shape"):
        ToTensor()(torch.zeros(1, 2, 3, 4, 5, dtype=torch.uint8))
    with pytest.raises(ValueError, match="shape"):
        ToTensor()(np.zeros(3, dtype=np.uint8))


def test_normalize_hand_computed():
    x = torch.tensor([[[0.0, 0.5, 1.0]]])
    assert torch.equal(Normalize((0.5,), (0.25,))(x), torch.tensor([[[-2.0, 0.0, 2.0]]]))
    rgb = torch.ones(3, 1, 2)
    out = Normalize((0.0, 0.5, 1.0), (1.0, 0.5, 2.0))(rgb)
    assert torch.equal(out, torch.tensor([[[1.0, 1.0]], [[1.0, 1.0]], [[0.0, 0.0]]]))


def test_normalize_batch_equals_samples_and_respects_inplace():
    x = torch.rand(6, 3, 4, 4)
    original = x.clone()
    norm = Normalize((0.1, 0.2, 0.3), (0.5, 0.6, 0.7))
    out = norm(x)
    assert torch.equal(out, torch.stack([norm(s) for s in x]))
    assert torch.equal(x, original)  # not in place by default
    Normalize((0.1, 0.2, 0.3), (0.5, 0.6, 0.7), inplace=True)(x)
    assert torch.equal(x, out)


def test_normalize_errors():
    with pytest.raises(ValueError, match="zero"):
        Normalize((0.0,), (0.0,))
    with pytest.raises(TypeError, match="float"):
        Normalize((0.0,), (1.0,))(torch.zeros(1, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="shape"):
        Normalize((0.0,), (1.0,))(torch.zeros(2, 2))


def test_compose_applies_in_order_and_batch_equals_samples():
    tf = Compose([ToTensor(), Normalize((0.1307,), (0.3081,))])
    imgs = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
    per_sample = torch.stack([tf(x) for x in imgs])
    assert torch.equal(tf(imgs), per_sample)
    expected = (imgs[0].float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(per_sample[0, 0], expected, atol=1e-6)


def test_reprs_match_torchvision():
    assert repr(ToTensor()) == "ToTensor()"
    assert repr(Normalize((0.1307,), (0.3081,))) == "Normalize(mean=(0.1307,), std=(0.3081,))"
    tf = Compose([ToTensor(), Normalize((0.5,), (0.5,))])
    assert repr(tf) == "Compose(\n    ToTensor()\n    Normalize(mean=(0.5,), std=(0.5,))\n)"

"""Compute accounting: FLOP counts against hand counts (Linear, Conv3d, attention; forward and forward +
backward, double backward), the uncounted share, and a profile that leaves the model and the RNG untouched."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from equivrepro.compute import ComputeProfile, count_flops, count_parameters, op_time_shares, profile_compute
from equivrepro.metrics.keys import COMPUTE, scalar_key
from equivrepro.testing.pointcloud import LinearPointModel, PointCloudTask, make_pointcloud_batch


def test_linear_forward_and_backward():
    b, d_in, d_out = 5, 12, 7
    lin = nn.Linear(d_in, d_out)
    x = torch.randn(b, d_in, requires_grad=True)
    fwd = 2 * b * d_in * d_out  # one multiply-add per weight per row
    assert count_flops(lambda: lin(x))[0] == fwd
    # backward: grad_input (x requires grad) and grad_weight, each another fwd; the bias gradient is a sum (0)
    assert count_flops(lambda: lin(x).sum().backward())[0] == 3 * fwd
    x_const = torch.randn(b, d_in)
    assert count_flops(lambda: lin(x_const).sum().backward())[0] == 2 * fwd


def test_conv3d_forward_and_backward():
    b, c_in, c_out, k, size = 2, 3, 4, 3, 6
    conv = nn.Conv3d(c_in, c_out, kernel_size=k, padding=1)
    x = torch.randn(b, c_in, size, size, size, requires_grad=True)
    fwd = 2 * b * c_out * size**3 * c_in * k**3  # output voxels × multiply-adds per voxel
    total, by_op = count_flops(lambda: conv(x))
    assert total == fwd and set(by_op) == {"aten.convolution"}
    assert count_flops(lambda: conv(x).sum().backward())[0] == 3 * fwd  # grad_input + grad_weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_forward_and_backward(dtype):
    """CPU SDPA (torch has no formula for it: counted here) and the same attention written as matmuls."""
    b, h, lq, s, d = 2, 3, 10, 12, 8
    q = torch.randn(b, h, lq, d, dtype=dtype, requires_grad=True)
    k = torch.randn(b, h, s, d, dtype=dtype, requires_grad=True)
    v = torch.randn(b, h, s, d, dtype=dtype, requires_grad=True)
    unit = 2 * b * h * lq * s * d  # one (l × d)·(d × s) product per head
    total, by_op = count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert total == 2 * unit and "aten._scaled_dot_product_flash_attention_for_cpu" in by_op  # QKᵀ and AV
    # backward of the fused kernel: recompute QKᵀ, then dV, dA, dQ, dK (torch's convention for fused kernels)
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())[0] == (2 + 5) * unit

    def manual():
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        return a @ v

    assert count_flops(manual)[0] == 2 * unit
    assert count_flops(lambda: manual().sum().backward())[0] == (2 + 4) * unit  # no recomputation


def test_double_backward_is_counted():
    """Forces F = −∂E/∂x of E = ½‖xW‖² with create_graph, then a loss on F: 2 products forward (xW, ∂E/∂x),
    4 in the backward (through ∂E/∂x = (xW)Wᵀ: to xW and to W; through xW: to x and to W)."""
    m, hidden = 7, 5
    w = torch.randn(3, hidden, requires_grad=True)
    target = torch.randn(m, 3)

    def step():
        x = torch.randn(m, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        energy = 0.5 * (x @ w).pow(2).sum()
        (grad,) = torch.autograd.grad(energy, x, create_graph=True)
        (-grad - target).pow(2).sum().backward()

    assert count_flops(step)[0] == 6 * (2 * m * 3 * hidden)


def test_uncounted_share_is_the_time_share_of_ops_without_a_formula():
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    share, ops = op_time_shares(lambda: a @ b)
    assert share == 0.0 and ops == {}
    share, ops = op_time_shares(lambda: (a * b).exp())
    assert share == 1.0 and set(ops) == {"aten.mul", "aten.exp"}
    share, ops = op_time_shares(lambda: (a @ b).exp())
    assert 0.0 < share < 1.0 and set(ops) == {"aten.exp"}


class _BatchNormPoints(nn.Module):
    """Linear map of points with a BatchNorm and dropout (buffers and RNG that a profile must not disturb)."""

    def __init__(self):
        super().__init__()
        self.lin = LinearPointModel(torch.eye(3, dtype=torch.float64))
        self.norm = nn.BatchNorm1d(3).double()
        self.drop = nn.Dropout(0.5)

    def forward(self, pos):
        y = self.lin(pos)
        return self.drop(self.norm(y.reshape(-1, 3)).reshape(y.shape))


def test_profile_of_a_linear_point_model_matches_the_hand_count(gen):
    b, n = 4, 6
    batch = make_pointcloud_batch(b, n, gen)
    model = LinearPointModel(torch.randn(3, 3, dtype=torch.float64))
    prof = profile_compute(PointCloudTask(), model, batch, repeats=2, time_ops=False)
    fwd = 2 * (b * n) * 3 * 3  # pos (B·N, 3) @ Aᵀ
    assert prof.flops_per_step == 2 * fwd  # forward + grad of A (pos needs no gradient)
    assert prof.flops_per_inference == fwd and prof.flops_per_step_min == prof.flops_per_step_max
    assert prof.parameters == 9 == count_parameters(model) and prof.batch_size == b
    assert prof.seconds_per_step > 0 and prof.seconds_per_inference > 0 and math.isnan(prof.uncounted_share)
    assert prof.flops_per_sample_step == 2 * fwd / b
    metrics = prof.metrics()
    assert metrics[scalar_key(COMPUTE, "flops_per_step")] == 2 * fwd and metrics[scalar_key(COMPUTE, "parameters")] == 9
    assert all(k.startswith(f"{COMPUTE}/") for k in metrics)


def test_profile_leaves_model_gradients_buffers_and_rng_untouched(gen):
    batch = make_pointcloud_batch(3, 5, gen)
    model = _BatchNormPoints().eval()
    model.lin.a.grad = torch.full((3, 3), 7.0, dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    prof = profile_compute(PointCloudTask(), model, batch, repeats=1)
    assert isinstance(prof, ComputeProfile) and 0 < prof.uncounted_share <= 1
    assert not model.training
    assert torch.equal(model.lin.a.grad, torch.full((3, 3), 7.0, dtype=torch.float64))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(torch.get_rng_state(), rng)


class _VariableWorkTask(PointCloudTask):
    """A task whose step runs the model once or twice, by a draw from the step's generator (like self-conditioning)."""

    def training_loss(self, model, batch, generator):
        loss, logs = super().training_loss(model, batch, generator)
        if float(torch.rand((), generator=generator)) < 0.5:
            loss = loss + model(batch["pos"]).pow(2).mean()
        return loss, logs


def test_flops_are_averaged_over_the_task_s_own_draws(gen):
    batch = make_pointcloud_batch(2, 4, gen)
    model = LinearPointModel(torch.randn(3, 3, dtype=torch.float64))
    prof = profile_compute(_VariableWorkTask(), model, batch, flop_steps=8, repeats=1, time_ops=False)
    one = 2 * (2 * 4) * 3 * 3 * 2  # one forward + backward
    assert prof.flops_per_step_min == one and prof.flops_per_step_max == 2 * one
    assert one < prof.flops_per_step < 2 * one

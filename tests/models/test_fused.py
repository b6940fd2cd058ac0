"""Fused batch-norm -> ReLU -> max-pool: same values, gradients and second-order gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metafit import MAML, ProtoNet, seeded
from metafit.engine import meta_gradients
from metafit.functional import apply
from metafit.models import Conv4, TaskBatchNorm, batch_norm_relu_max_pool, fuse_norm_relu_pool
from tests.conftest import image_tasks


def _plain_net(affine: bool = True, ceil_mode: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = 1
    for _ in range(3):
        layers += [
            nn.Conv2d(c, 4, 3, padding=1),
            nn.BatchNorm2d(4, affine=affine, track_running_stats=False),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=ceil_mode),
        ]
        c = 4
    return nn.Sequential(*layers, nn.Flatten())


def _binary_images(n: int, side: int = 14, seed: int = 0) -> torch.Tensor:
    # Omniglot-like: flat regions make ties inside pooling windows, where the argmax choice matters.
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 1, side, side, generator=g) > 0.7).double()
    x[:, :, : side // 2] = 1.0
    return x


def _grads(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    out = model(x)
    weights = torch.linspace(-1.0, 1.0, out.shape[1], dtype=out.dtype)
    loss = (out * weights).sum() + out.pow(2).sum()
    return out, list(torch.autograd.grad(loss, list(model.parameters())))


@pytest.mark.parametrize(("affine", "ceil_mode"), [(True, False), (False, False), (True, True)])
def test_fused_plain_network_gives_the_same_values_and_gradients(affine: bool, ceil_mode: bool) -> None:
    model = seeded(0, lambda: _plain_net(affine, ceil_mode)).double()
    if affine:
        with torch.no_grad():
            model[1].weight[:2] *= -1.0  # negative scales: pooling must still pick the max after the norm
    fused = fuse_norm_relu_pool(model)
    assert fused.fused_blocks == 3
    x = _binary_images(6)
    out, grads = _grads(model, x)
    out_f, grads_f = _grads(fused, x)
    torch.testing.assert_close(out_f, out, rtol=1e-12, atol=1e-13)  # float64; rounding differs (thin conv)
    scale = max(g.abs().max().item() for g in grads)
    for name, a, b in zip([n for n, _ in model.named_parameters()], grads_f, grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12 * scale, msg=name)


def test_fused_module_shares_parameters_under_the_same_names() -> None:
    # float64: the comparison is about wiring, not about float32 rounding (which differs by CPU).
    model = seeded(0, lambda: Conv4(1, 5, width=8, image_size=28, fuse=False)).double()
    model.register_buffer("unused_buffer", torch.arange(3.0))
    model.unused = nn.Parameter(torch.zeros(2))  # never used by forward: must survive for strict calls
    fused = fuse_norm_relu_pool(model)
    assert fused.fused_blocks == 4
    assert dict(fused.named_parameters()).keys() == dict(model.named_parameters()).keys()
    for (n, p), (_, q) in zip(model.named_parameters(), fused.named_parameters()):
        assert p is q, n
    assert dict(fused.named_buffers()).keys() == dict(model.named_buffers()).keys()
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    params = dict(model.named_parameters())
    torch.testing.assert_close(apply(fused, params, dict(model.named_buffers()), x), model(x), rtol=1e-10, atol=1e-12)
    # A strided Conv-4 has no pooling: nothing to fuse. A default Conv4 computes its blocks with
    # the fused call already; torch.fx keeps that call whole.
    assert fuse_norm_relu_pool(Conv4(1, 5, width=8, downsample="stride")).fused_blocks == 0
    native = fuse_norm_relu_pool(seeded(0, lambda: Conv4(1, 5, width=8, image_size=28)).double())
    assert native.fused_blocks == 0 and "relu_max_pool" in native.code and "conv_batch_norm" in native.code
    torch.testing.assert_close(native(x), model(x), rtol=1e-10, atol=1e-12)


def test_maml_second_order_meta_gradient_is_unchanged_by_fusion_on_loop_and_vmap_paths() -> None:
    model = seeded(0, lambda: Conv4(1, 3, width=4, image_size=16, fuse=False)).double()
    native = seeded(0, lambda: Conv4(1, 3, width=4, image_size=16)).double()  # fused by default
    algo = MAML(inner_lr=0.1, inner_steps=2)
    batch = image_tasks(2, side=16)
    ref, _ = meta_gradients(algo, model, algo.init(model), {}, batch, path="loop")
    for name, net in (("fx pass", fuse_norm_relu_pool(model)), ("Conv4 default", native)):
        for path in ("loop", "vmap"):  # under vmap the fused op computes the elementary composition
            got, _ = meta_gradients(algo, net, algo.init(model), {}, batch, path=path)
            for k in ref["model"]:
                torch.testing.assert_close(
                    got["model"][k], ref["model"][k], rtol=1e-10, atol=1e-13, msg=f"{name} {path} {k}"
                )


def test_fused_torch_batchnorm_network_is_exact_under_vmap_unlike_the_unfused_one() -> None:
    # The fused node never calls torch's batch_norm under vmap, so the vmap path (refused for the
    # unfused network with torch BatchNorm) gives the loop's second-order meta-gradient.
    model = seeded(0, lambda: Conv4(1, 3, width=4, image_size=16, norm="batchnorm", fuse=False)).double()
    fused = fuse_norm_relu_pool(model)
    algo = MAML(inner_lr=0.1)
    batch = image_tasks(2, side=16)
    ref, _ = meta_gradients(algo, model, algo.init(model), {}, batch, path="loop")
    got, _ = meta_gradients(algo, fused, algo.init(model), {}, batch, path="vmap")
    for k in ref["model"]:
        torch.testing.assert_close(got["model"][k], ref["model"][k], rtol=1e-10, atol=1e-13, msg=k)


def test_protonet_episode_gradient_is_unchanged_by_fusion_in_float32() -> None:
    # Continuous inputs: no exact ties inside pooling windows. (With binary images flat regions tie
    # exactly; float rounding may then pick another, equally valid, argmax: a different subgradient.)
    model = seeded(1, lambda: Conv4(1, None, width=16, fuse=False)).to(memory_format=torch.channels_last)
    fused = seeded(1, lambda: Conv4(1, None, width=16)).to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    sx = torch.rand(1, 5, 1, 28, 28, generator=g)
    qx = torch.rand(1, 15, 1, 28, 28, generator=g)
    from metafit.data.task import TaskBatch

    batch = TaskBatch(sx, torch.arange(5)[None], qx, torch.arange(5).repeat(3)[None], n_way=5)
    algo = ProtoNet(distance="euclidean", joint_embedding=False)
    ref, m_ref = meta_gradients(algo, model, algo.init(model), {}, batch, path="loop")
    got, m_got = meta_gradients(algo, fused, algo.init(model), {}, batch, path="loop")
    assert m_got["loss"] == pytest.approx(m_ref["loss"], rel=1e-5)
    scale = max(g.abs().max().item() for g in ref["model"].values())
    for k in ref["model"]:  # float32 rounding: differences relative to the largest gradient
        torch.testing.assert_close(got["model"][k], ref["model"][k], rtol=0, atol=2e-4 * scale, msg=k)


def test_batch_norm_relu_max_pool_double_backward_is_the_composition() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1.3, -0.7], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.2, 0.1], dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, b: batch_norm_relu_max_pool(x, w, b, 1e-5, 2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))
    composed = lambda x, w, b: F.max_pool2d(F.relu(F.batch_norm(x, None, None, w, b, True, 0.0, 1e-5)), 2)  # noqa: E731
    torch.testing.assert_close(fn(x, w, b), composed(x, w, b), rtol=0, atol=0)


def test_functional_relu_and_pool_calls_are_fused_and_shared_results_are_not() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.norm = TaskBatchNorm(4)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.norm2 = nn.BatchNorm2d(4, track_running_stats=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.max_pool2d(F.relu(self.norm(self.conv(x))), kernel_size=2)
            h2 = self.norm2(self.conv2(h)).relu()
            return (F.max_pool2d(h2, 2) + h2.mean()).flatten(1)  # h2 used twice: must stay unfused

    model = seeded(0, Functional).double()
    fused = fuse_norm_relu_pool(model)
    assert fused.fused_blocks == 1
    x = _binary_images(4, side=8)
    out, grads = _grads(model, x)
    out_f, grads_f = _grads(fused, x)
    torch.testing.assert_close(out_f, out, rtol=1e-12, atol=1e-13)
    scale = max(g.abs().max().item() for g in grads)
    for a, b in zip(grads_f, grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12 * scale)


def test_running_statistics_batchnorm_is_left_alone() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
    fused = fuse_norm_relu_pool(model)
    assert fused.fused_blocks == 0
    assert dict(fused.named_buffers()).keys() == dict(model.named_buffers()).keys()


def test_fused_blocks_trace_under_torch_compile_to_the_same_function() -> None:
    # Under torch.compile relu_max_pool is the plain composition (no autograd.Function of ATen
    # internals in the graph) and conv_batch_norm's matrix-product form is traced as is; one graph,
    # same values and gradients as the unfused network. backend="eager" keeps the test fast.
    model = seeded(0, lambda: Conv4(1, 3, width=4, image_size=16, fuse=False)).double()
    fused = seeded(0, lambda: Conv4(1, 3, width=4, image_size=16)).double()
    x = _binary_images(4, side=16)
    compiled = torch.compile(fused, backend="eager", fullgraph=True)
    out, grads = _grads(model, x)
    out_c, grads_c = _grads(compiled, x)
    torch.testing.assert_close(out_c, out, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads_c, grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_errors_name_the_problem() -> None:
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x

    with pytest.raises(TypeError, match="fuse_norm_relu_pool: torch.fx cannot trace Branchy.forward"):
        fuse_norm_relu_pool(Branchy())
    with pytest.raises(ValueError, match=r"expected x of shape \(B, C, H, W\), got \(2, 3\)"):
        batch_norm_relu_max_pool(torch.zeros(2, 3), None, None)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\), got \(4,\)"):
        batch_norm_relu_max_pool(torch.zeros(2, 3, 4, 4), torch.ones(4), torch.zeros(4))
    with pytest.raises(ValueError, match="weight and bias must both be tensors or both None"):
        batch_norm_relu_max_pool(torch.zeros(2, 3, 4, 4), torch.ones(3), None)


@pytest.mark.parametrize(
    ("c_in", "k", "stride", "padding", "affine", "conv_bias"),
    [
        (1, 3, 1, 1, True, True),  # the Omniglot first layer (K = 9)
        (1, 3, 2, 1, True, True),  # the strided MAML first layer
        (3, 3, 1, 0, False, False),  # K = 27, no affine, no conv bias
        (1, 5, 2, 2, True, False),  # K = 25
        (4, 3, 1, 1, True, True),  # K = 36 > THIN_CONV_MAX_K: the unfused composition
    ],
)
def test_conv_batch_norm_is_conv_then_batch_norm(
    c_in: int, k: int, stride: int, padding: int, affine: bool, conv_bias: bool
) -> None:
    from metafit.models.ops import conv_batch_norm

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(5, c_in, 11, 11, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    w = torch.randn(6, c_in, k, k, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True) if conv_bias else None
    gamma = (torch.randn(6, generator=g, dtype=torch.float64)).requires_grad_() if affine else None
    beta = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True) if affine else None
    inputs = [t for t in (x, w, b, gamma, beta) if t is not None]

    def reference() -> torch.Tensor:
        return F.batch_norm(F.conv2d(x, w, b, stride, padding), None, None, gamma, beta, True, 0.0, 1e-5)

    out, ref = conv_batch_norm(x, w, b, gamma, beta, 1e-5, stride, padding), reference()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    probe = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((out * probe).sum(), inputs, create_graph=True)
    grads_ref = torch.autograd.grad((ref * probe).sum(), inputs, create_graph=True)
    for a, r in zip(grads, grads_ref):  # the conv bias's gradient is 0 in both (up to rounding)
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-10)
    # second order: the gradient of a function of the first-order gradients
    second = torch.autograd.grad(sum((gr * gr).sum() for gr in grads), [w, x])
    second_ref = torch.autograd.grad(sum((gr * gr).sum() for gr in grads_ref), [w, x])
    for a, r in zip(second, second_ref):
        torch.testing.assert_close(a, r, rtol=1e-8, atol=1e-9)


def test_fx_pass_joins_a_thin_first_convolution() -> None:
    model = seeded(0, _plain_net).double()
    fused = fuse_norm_relu_pool(model)
    assert fused.code.count("conv_batch_norm") >= 1  # the 1-channel first conv (K = 9)
    assert fused.code.count("task_batch_norm") >= 2  # the 4-channel ones (K = 36) stay convolutions
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in model.named_parameters()]


def test_conv_batch_norm_names_a_channel_mismatch() -> None:
    from metafit.models.ops import conv_batch_norm

    with pytest.raises(ValueError, match="x has 2 channels, conv_weight expects 1"):
        conv_batch_norm(torch.zeros(1, 2, 5, 5), torch.zeros(3, 1, 3, 3), None, None, None)

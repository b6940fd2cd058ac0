"""``fuse_norm_relu_pool``: a ``torch.fx`` pass that gives any traceable network the fused blocks.

This is kernel-level fusion inside one network (unrelated to :mod:`metafit.fusion`, which combines
several models' predictions). :mod:`metafit.models.ops` computes a block's composition with fewer
passes over memory and the same values, gradients and second-order gradients (up to float
rounding): :func:`~metafit.models.ops.relu_max_pool` (the ReLU after the pooling) and
:func:`~metafit.models.ops.conv_batch_norm` (a thin convolution and its batch norm as one matrix
product). :class:`metafit.models.Conv4` uses them by default. :func:`fuse_norm_relu_pool` brings
them to ANY ``nn.Module`` whose forward ``torch.fx`` can trace: it finds every
``[conv ->] norm -> relu -> max_pool2d`` chain whose intermediate results have no other use and
returns a ``torch.fx.GraphModule`` computing the same function with the fused calls. The new
module shares the original's parameters and buffers under the same names (and order), so
parameter dicts, ``functional_call(..., strict=True)``, optimisers and checkpoints are
interchangeable between them.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from metafit.models.backbones import TaskBatchNorm
from metafit.models.ops import THIN_CONV_MAX_K, conv_batch_norm, relu_max_pool, task_batch_norm

__all__ = ["fuse_norm_relu_pool"]


class _Tracer(fx.Tracer):
    """``torch.fx`` tracer that keeps TaskBatchNorm a leaf (its forward checks shapes in Python)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, TaskBatchNorm) or super().is_leaf_module(m, module_qualified_name)


def _norm_of(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[str, nn.Module] | None:
    """The (qualified name, module) of a batch-statistics 2-D norm called by ``node``, else None."""
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    m = modules[str(node.target)]
    if isinstance(m, TaskBatchNorm):
        return str(node.target), m
    # BatchNorm2d without running statistics always normalises with the batch's own; with running
    # statistics it would update (training) or use (eval) them, which the fused node does not do.
    if type(m) is nn.BatchNorm2d and m.running_mean is None and m.running_var is None:
        return str(node.target), m
    return None


_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if len(node.args) != 1:
        return False
    if node.op == "call_module":
        return type(modules[str(node.target)]) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS and set(node.kwargs) <= {"inplace"}
    return node.op == "call_method" and node.target in ("relu", "relu_") and not node.kwargs


def _reference_max_pool2d(
    input: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> None:
    """Signature of ``F.max_pool2d``, to bind a traced call's arguments."""


def _pool_args(node: fx.Node, modules: dict[str, nn.Module]) -> dict[str, Any] | None:
    """The pooling arguments of a 2-D max-pool ``node`` that returns only values, else None."""
    if node.op == "call_module":
        m = modules[str(node.target)]
        if type(m) is not nn.MaxPool2d or m.return_indices or len(node.args) != 1 or node.kwargs:
            return None
        args = dict(
            kernel_size=m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation, ceil_mode=m.ceil_mode
        )
    elif node.op == "call_function" and node.target in (F.max_pool2d, torch.max_pool2d):
        try:
            bound = inspect.signature(_reference_max_pool2d).bind(*node.args, **node.kwargs)
        except TypeError:
            return None
        bound.apply_defaults()
        args = dict(bound.arguments)
        if args.pop("return_indices"):
            return None
        args.pop("input")
    else:
        return None
    if any(isinstance(v, fx.Node) for v in args.values()):
        return None  # pooling arguments computed at run time: leave the call alone
    return args


def _thin_conv_of(node: Any, modules: dict[str, nn.Module]) -> tuple[fx.Node, str, nn.Conv2d] | None:
    """A plain ``nn.Conv2d`` call whose only user is the norm and whose patches are few, else None."""
    if not isinstance(node, fx.Node) or node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    m = modules[str(node.target)]
    if type(m) is not nn.Conv2d or _only_user(node) is None:
        return None
    if m.groups != 1 or tuple(m.dilation) != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
        return None
    if m.in_channels * m.kernel_size[0] * m.kernel_size[1] > THIN_CONV_MAX_K:
        return None
    return node, str(node.target), m


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _attach(root: nn.Module, name: str, value: Tensor, parameter: bool) -> None:
    """Registers ``value`` at dotted ``name`` under ``root``, creating empty containers on the way."""
    *path, leaf = name.split(".")
    owner = root
    for part in path:
        if not hasattr(owner, part):
            owner.add_module(part, nn.Module())
        owner = getattr(owner, part)
    if parameter:
        owner.register_parameter(leaf, value)  # type: ignore[arg-type]
    else:
        owner.register_buffer(leaf, value)


def fuse_norm_relu_pool(model: nn.Module) -> fx.GraphModule:
    """The same network with every batch-norm -> ReLU -> max-pool chain computed by the fused functions.

    A chain is fused when: the norm is :class:`~metafit.models.TaskBatchNorm` or
    ``nn.BatchNorm2d(track_running_stats=False)`` called as a module; the ReLU is ``nn.ReLU``,
    ``F.relu``/``torch.relu`` or ``.relu()``; the pooling is ``nn.MaxPool2d``/``F.max_pool2d``
    without ``return_indices`` and with constant arguments; and neither intermediate result is used
    anywhere else. A plain ``nn.Conv2d`` feeding the norm with few patch elements
    (``C_in * kh * kw <= THIN_CONV_MAX_K``, e.g. a grey-scale first layer) joins the chain as
    :func:`~metafit.models.ops.conv_batch_norm`. Everything else in the forward is kept as traced.
    The function computed, its gradients and its second-order gradients are the original's, up to
    float rounding (see :mod:`metafit.models.ops`).

    Args:
        model: Any ``nn.Module`` whose ``forward`` ``torch.fx.symbolic_trace`` can trace (no
            Python control flow on tensor values). Unchanged by this call.

    Returns:
        A ``torch.fx.GraphModule`` sharing ``model``'s parameter and buffer objects under the same
        names (also those the forward never uses); ``fused_blocks`` holds the number of chains
        fused. Only ``forward`` is carried over, not other methods of ``model``.

    Raises:
        TypeError: ``torch.fx`` cannot trace ``model``'s forward (the message says why).
    """
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # noqa: BLE001 (fx raises many types; the cause is kept)
        raise TypeError(
            f"fuse_norm_relu_pool: torch.fx cannot trace {type(model).__name__}.forward "
            f"({type(e).__name__}: {e}); use the model unfused"
        ) from e
    modules = dict(model.named_modules())
    fused = 0
    for node in list(graph.nodes):
        norm = _norm_of(node, modules)
        if norm is None:
            continue
        relu = _only_user(node)
        if relu is None or not _is_relu(relu, modules):
            continue
        pool = _only_user(relu)
        pool_args = _pool_args(pool, modules) if pool is not None else None
        if pool is None or pool_args is None:
            continue
        name, module = norm
        conv = _thin_conv_of(node.args[0], modules)
        with graph.inserting_before(pool):
            if conv is not None:  # (attributes fetched in the module's order: parameter order kept)
                conv_node, conv_name, conv_module = conv
                conv_w = graph.get_attr(f"{conv_name}.weight")
                conv_b = graph.get_attr(f"{conv_name}.bias") if conv_module.bias is not None else None
            weight = graph.get_attr(f"{name}.weight") if module.weight is not None else None
            bias = graph.get_attr(f"{name}.bias") if module.bias is not None else None
            if conv is not None:  # conv -> norm as one matrix product (conv_batch_norm)
                normed = graph.call_function(
                    conv_batch_norm,
                    (conv_node.args[0], conv_w, conv_b, weight, bias),
                    dict(eps=float(module.eps), stride=tuple(conv_module.stride), padding=tuple(conv_module.padding)),
                )
            else:
                normed = graph.call_function(task_batch_norm, (node.args[0], weight, bias, float(module.eps)))
            new = graph.call_function(relu_max_pool, (normed,), pool_args)
        pool.replace_all_uses_with(new)
        for old in (pool, relu, node) + ((conv[0],) if conv is not None else ()):
            graph.erase_node(old)
        fused += 1
    graph.lint()
    out = fx.GraphModule(model, graph, class_name=f"Fused{type(model).__name__}")
    have_params, have_buffers = dict(out.named_parameters()), dict(out.named_buffers())
    for name, p in model.named_parameters():
        if name not in have_params:
            _attach(out, name, p, parameter=True)
    for name, b in model.named_buffers():
        if name not in have_buffers:
            _attach(out, name, b, parameter=False)
    out.train(model.training)
    out.fused_blocks = fused
    return out

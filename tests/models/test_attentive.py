"""Attentive networks: attention oracle, masks, invariances, padding, vmap."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from metafit import seeded
from metafit.models import MLP, CNPRegressor
from metafit.models.attentive import (
    AttentiveNP,
    CNPAdapter,
    Detached,
    InContextClassifier,
    MultiheadAttention,
    TransformerLayer,
    TransformerNP,
    icl_mask,
    tnp_mask,
)

G = torch.Generator


def _anp(x_dim: int = 1, y_dim: int = 1) -> AttentiveNP:
    return seeded(0, lambda: AttentiveNP(x_dim, y_dim, d_model=16, n_heads=4, d_ff=16, decoder_hidden=(16,))).double()


def _tnp(x_dim: int = 1, y_dim: int = 1) -> TransformerNP:
    return seeded(
        0,
        lambda: TransformerNP(
            x_dim, y_dim, d_model=16, n_heads=4, n_layers=2, d_ff=16, embed_depth=2, decoder_hidden=(16,)
        ),
    ).double()


def _cnp(x_dim: int = 1, y_dim: int = 1) -> CNPAdapter:
    return seeded(
        0, lambda: CNPAdapter(CNPRegressor(x_dim, y_dim, r_dim=16, encoder_hidden=(16,), decoder_hidden=(16,)))
    ).double()


def _icl(max_way: int = 5, backbone: nn.Module | None = None, **options: object) -> InContextClassifier:
    return seeded(
        0,
        lambda: InContextClassifier(
            backbone or MLP(4, (16,), 16), 16, max_way=max_way, d_model=16, n_heads=2, n_layers=2, d_ff=32, **options
        ),
    ).double()


# the token layouts and layer kinds of the in-context classifier: every structural test runs on each
ICL_VARIANTS = {
    "default": {},
    "summed-labels": {"label_dim": 0},
    "post-norm-untied": {"norm_first": False, "tied_qk": False, "label_dim": 0},
}


NETS = {"anp": _anp, "tnp": _tnp, "cnp": _cnp}


def _data(c: int, t: int, x_dim: int = 1, y_dim: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = G().manual_seed(seed)
    return (
        torch.randn(c, x_dim, generator=g, dtype=torch.float64),
        torch.randn(c, y_dim, generator=g, dtype=torch.float64),
        torch.randn(t, x_dim, generator=g, dtype=torch.float64),
    )


def test_multihead_attention_matches_direct_softmax() -> None:
    mha = seeded(0, lambda: MultiheadAttention(8, 2, d_key=3, d_value=5)).double()
    g = G().manual_seed(1)
    q, k, v = (
        torch.randn(4, 8, generator=g, dtype=torch.float64),
        torch.randn(6, 3, generator=g, dtype=torch.float64),
        torch.randn(6, 5, generator=g, dtype=torch.float64),
    )
    mask = torch.rand(4, 6, generator=g) > 0.4
    mask[:, 0] = True
    out = mha(q, k, v, mask)
    qs, ks, vs = mha.q(q), mha.k(k), mha.v(v)
    heads = []
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        scores = qs[:, sl] @ ks[:, sl].T / math.sqrt(4)
        scores = scores.masked_fill(~mask, -math.inf)
        heads.append(torch.softmax(scores, -1) @ vs[:, sl])
    torch.testing.assert_close(out, mha.out(torch.cat(heads, -1)))


def test_tied_attention_uses_the_query_projection_for_keys() -> None:
    mha = seeded(0, lambda: MultiheadAttention(8, 2, tied_qk=True)).double()
    assert mha.k is None and not any(n.startswith("k.") for n, _ in mha.named_parameters())
    x = torch.randn(5, 8, generator=G().manual_seed(2), dtype=torch.float64)
    qs, vs = mha.q(x), mha.v(x)
    heads = [torch.softmax(qs[:, sl] @ qs[:, sl].T / 2.0, -1) @ vs[:, sl] for sl in (slice(0, 4), slice(4, 8))]
    torch.testing.assert_close(mha(x, x, x), mha.out(torch.cat(heads, -1)))
    with pytest.raises(ValueError, match="tied_qk needs keys of the queries' width d_model=8, got d_key=3"):
        MultiheadAttention(8, 2, d_key=3, tied_qk=True)


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_layer_matches_hand_written(norm_first: bool) -> None:
    layer = seeded(0, lambda: TransformerLayer(8, 2, 16, norm_first=norm_first)).double()
    x = torch.randn(5, 8, generator=G().manual_seed(3), dtype=torch.float64)
    mask = icl_mask(3, 2)
    a, f, n1, n2 = layer.attn, layer.ff, layer.norm1, layer.norm2
    if norm_first:
        h = x + a(n1(x), n1(x), n1(x), mask)
        expected = h + f(n2(h))
    else:
        h = n1(x + a(x, x, x, mask))
        expected = n2(h + f(h))
    torch.testing.assert_close(layer(x, mask), expected)


def test_tnp_mask_known_answer() -> None:
    m = tnp_mask(torch.tensor([True, False, True]), 2)
    expected = torch.tensor([[1, 0, 1, 0, 0]] * 5, dtype=torch.bool)
    assert torch.equal(m, expected)


def test_icl_mask_known_answer() -> None:
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 0, 1, 0],
            [1, 1, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(icl_mask(2, 3), expected)


@pytest.mark.parametrize("name", sorted(NETS))
def test_regressor_invariant_to_context_order_equivariant_to_target_order(name: str) -> None:
    net = NETS[name]()
    cx, cy, tx = _data(9, 7)
    mean, var = net(cx, cy, tx)
    pc = torch.randperm(9, generator=G().manual_seed(2))
    pt = torch.randperm(7, generator=G().manual_seed(3))
    mean2, var2 = net(cx[pc], cy[pc], tx[pt])
    torch.testing.assert_close(mean2, mean[pt])
    torch.testing.assert_close(var2, var[pt])
    assert not torch.allclose(mean[0], mean[1])  # the outputs really depend on the target


@pytest.mark.parametrize("name", sorted(NETS))
def test_regressor_target_never_attends_to_other_targets(name: str) -> None:
    net = NETS[name]()
    cx, cy, tx = _data(6, 5)
    mean, var = net(cx, cy, tx)
    tx2 = tx.clone()
    tx2[2] += 1.7
    mean2, var2 = net(cx, cy, tx2)
    keep = [0, 1, 3, 4]
    torch.testing.assert_close(mean2[keep], mean[keep], rtol=0, atol=1e-12)
    torch.testing.assert_close(var2[keep], var[keep], rtol=0, atol=1e-12)
    assert not torch.allclose(mean2[2], mean[2])


@pytest.mark.parametrize("name", sorted(NETS))
def test_regressor_padding_matches_unpadded(name: str) -> None:
    net = NETS[name](2, 3)
    cx, cy, tx = _data(5, 4, 2, 3)
    mean, var = net(cx, cy, tx)
    g = G().manual_seed(9)
    # padding rows hold garbage: the mask alone must keep them out
    pcx = torch.cat([cx[:2], torch.randn(3, 2, generator=g, dtype=torch.float64), cx[2:]])
    pcy = torch.cat([cy[:2], 5 * torch.randn(3, 3, generator=g, dtype=torch.float64), cy[2:]])
    mask = torch.tensor([True, True, False, False, False, True, True, True])
    pmean, pvar = net(pcx, pcy, tx, context_mask=mask)
    torch.testing.assert_close(pmean, mean)
    torch.testing.assert_close(pvar, var)
    assert mean.shape == (4, 3) and bool((var > net_min_variance(net)).all())


def net_min_variance(net: nn.Module) -> float:
    return net.cnp.min_variance if isinstance(net, CNPAdapter) else net.min_variance  # type: ignore[return-value]


@pytest.mark.parametrize("name", sorted(NETS))
def test_regressor_vmap_equals_loop(name: str) -> None:
    net = NETS[name]()
    g = G().manual_seed(4)
    cx, cy, tx = (
        torch.randn(3, 6, 1, generator=g, dtype=torch.float64),
        torch.randn(3, 6, 1, generator=g, dtype=torch.float64),
        torch.randn(3, 4, 1, generator=g, dtype=torch.float64),
    )
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3, [True] + [False] * 5])
    mv, vv = torch.func.vmap(net)(cx, cy, tx, mask)
    for i in range(3):
        m, v = net(cx[i], cy[i], tx[i], mask[i])
        torch.testing.assert_close(mv[i], m)
        torch.testing.assert_close(vv[i], v)


def test_regressor_refuses_wrong_mask_shape() -> None:
    cx, cy, tx = _data(4, 2)
    with pytest.raises(ValueError, match="context_mask must have shape"):
        _tnp()(cx, cy, tx, context_mask=torch.ones(3, dtype=torch.bool))


def _cls_data(s: int = 9, q: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = G().manual_seed(seed)
    return (
        torch.randn(s, 4, generator=g, dtype=torch.float64),
        torch.arange(s) % 3,
        torch.randn(q, 4, generator=g, dtype=torch.float64),
    )


@pytest.mark.parametrize("variant", sorted(ICL_VARIANTS))
def test_classifier_invariant_to_support_order_equivariant_to_query_order(variant: str) -> None:
    net = _icl(**ICL_VARIANTS[variant])
    sx, sy, qx = _cls_data()
    logits = net(sx, sy, qx, 3)
    ps, pq = torch.randperm(9, generator=G().manual_seed(5)), torch.randperm(6, generator=G().manual_seed(6))
    torch.testing.assert_close(net(sx[ps], sy[ps], qx[pq], 3), logits[pq])
    assert logits.shape == (6, 3)


@pytest.mark.parametrize("variant", sorted(ICL_VARIANTS))
def test_classifier_query_never_attends_to_other_queries(variant: str) -> None:
    net = _icl(**ICL_VARIANTS[variant])
    sx, sy, qx = _cls_data()
    logits = net(sx, sy, qx, 3)
    qx2 = qx.clone()
    qx2[0] = 3.0
    logits2 = net(sx, sy, qx2, 3)
    torch.testing.assert_close(logits2[1:], logits[1:], rtol=0, atol=1e-12)
    assert not torch.allclose(logits2[0], logits[0])


def test_classifier_logits_are_the_first_n_way_columns() -> None:
    net = _icl(max_way=5)
    sx, sy, qx = _cls_data()
    torch.testing.assert_close(net(sx, sy, qx, 3), net(sx, sy, qx, 5)[:, :3])
    with pytest.raises(ValueError, match="n_way must be an int in 1..5"):
        net(sx, sy, qx, 6)


@pytest.mark.parametrize("variant", sorted(ICL_VARIANTS))
def test_classifier_support_labels_matter(variant: str) -> None:
    net = _icl(**ICL_VARIANTS[variant])
    sx, sy, qx = _cls_data()
    assert not torch.allclose(net(sx, sy, qx, 3), net(sx, (sy + 1) % 3, qx, 3))


def test_classifier_token_layout_and_bad_label_dim() -> None:
    net = _icl(label_dim=4)
    assert net.project.out_features == 12 and net.label_table.shape == (5, 4) and net.readout.out_features == 4
    summed = _icl(label_dim=0)
    assert summed.project.out_features == 16 and summed.label_table.shape == (5, 16)
    assert _icl().label_table.shape == (5, 4)  # default: d_model // 4
    assert _icl(norm_first=False).final_norm is None
    with pytest.raises(ValueError, match=r"label_dim must be an int in 0..15 \(below d_model\), got 16"):
        _icl(label_dim=16)


def _fit_tabular_prior(net: InContextClassifier, steps: int) -> float:
    """Mean query cross-entropy of the last 50 of ``steps`` Adam steps on 3-way tabular-prior tasks."""
    from metafit.data.gp import TabularPriorTasks

    tasks = TabularPriorTasks(
        n_features=8, n_way=3, k_shot=5, n_query=10, latent_dim=2, classes="clusters", generator=G().manual_seed(0)
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    tail = []
    for step in range(steps):
        batch = [tasks.sample_task() for _ in range(4)]
        loss = sum(
            nn.functional.cross_entropy(net(t.support_x, t.support_y, t.query_x, 3), t.query_y) for t in batch
        ) / len(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= steps - 50:
            tail.append(float(loss.detach()))
    return sum(tail) / len(tail)


def test_classifier_leaves_the_chance_plateau_on_the_tabular_prior() -> None:
    """The pre-norm, tied, concatenated-label classifier learns within 600 steps (measured: 0.79
    ln 3) where the post-norm, untied, summed-label one of earlier releases sits at ln(n_way)."""
    chance = math.log(3)

    def build(**options: object) -> InContextClassifier:
        return seeded(
            0,
            lambda: InContextClassifier(
                MLP(8, (32,), 32), 32, max_way=3, d_model=32, n_heads=2, n_layers=2, d_ff=64, **options
            ),
        )

    learnt = _fit_tabular_prior(build(), 600)
    stuck = _fit_tabular_prior(build(norm_first=False, tied_qk=False, label_dim=0), 600)
    assert learnt < 0.88 * chance, (learnt, chance)
    assert stuck > 0.97 * chance, (stuck, chance)


def test_detached_backbone_gets_no_gradient() -> None:
    frozen = _icl(backbone=Detached(MLP(4, (16,), 16)))
    joint = _icl()
    sx, sy, qx = _cls_data()
    for net, backbone_moves in ((frozen, False), (joint, True)):
        net.zero_grad()
        net(sx, sy, qx, 3).logsumexp(-1).sum().backward()
        bb = [p.grad for n, p in net.named_parameters() if n.startswith("backbone.")]
        rest = [p.grad for n, p in net.named_parameters() if not n.startswith("backbone.")]
        assert all(g is None or not g.any() for g in bb) != backbone_moves
        assert all(g is not None and g.abs().sum() > 0 for g in rest[:2])
    # composition keeps the function: same weights, same outputs
    frozen.backbone.module.load_state_dict(joint.backbone.state_dict())
    frozen.load_state_dict({k: v for k, v in joint.state_dict().items() if not k.startswith("backbone.")}, strict=False)
    torch.testing.assert_close(frozen(sx, sy, qx, 3), joint(sx, sy, qx, 3))


@pytest.mark.parametrize("kind", ["cnp", "anp", "tnp"])
def test_build_np_network_any_dims_and_padding(kind: str) -> None:
    from metafit.models.attentive import build_np_network

    net = seeded(0, lambda: build_np_network(kind, x_dim=2, y_dim=2, d_model=8, n_heads=2, n_layers=1, d_ff=8)).double()
    cx, cy, tx = _data(4, 3, 2, 2)
    mean, var = net(cx, cy, tx)
    pm, pv = net(
        torch.cat([cx, torch.ones(2, 2, dtype=torch.float64)]),
        torch.cat([cy, torch.ones(2, 2, dtype=torch.float64)]),
        tx,
        torch.tensor([True] * 4 + [False] * 2),
    )
    torch.testing.assert_close(pm, mean)
    torch.testing.assert_close(pv, var)
    assert mean.shape == (3, 2)
    with pytest.raises(ValueError, match="kind must be one of"):
        build_np_network("gp")


def test_cnp_network_post_aggregation_mlp_and_sd_bound() -> None:
    from metafit.models.attentive import build_np_network

    plain = build_np_network("cnp", d_model=8, n_layers=1)
    post = seeded(0, lambda: build_np_network("cnp", d_model=8, n_layers=1, post_layers=1, variance_bound="scale"))
    post = post.double()
    # the MLP after the mean adds parameters under its own name; a paper CNP's names are unchanged
    extra = set(dict(post.named_parameters())) - set(dict(plain.named_parameters()))
    assert extra == {"cnp.post.0.weight", "cnp.post.0.bias", "cnp.post.2.weight", "cnp.post.2.bias"}
    cx, cy, tx = _data(5, 4, 1, 1)
    r = post.cnp.represent(cx, cy).mean(0)
    mean, var = post(cx, cy, tx)
    expected = post.cnp.decode(tx, post.cnp.post(r))
    torch.testing.assert_close(mean, expected[0])
    torch.testing.assert_close(var, expected[1])
    # padding still changes nothing, and the sd (not the variance) carries the floor
    pm, _ = post(
        torch.cat([cx, torch.ones(2, 1, dtype=torch.float64)]),
        torch.cat([cy, cy[:2]]),
        tx,
        torch.tensor([True] * 5 + [False] * 2),
    )
    torch.testing.assert_close(pm, mean)
    assert post.cnp.bound == "scale" and bool((var.sqrt() >= 0.1 - 1e-12).all())
    with pytest.raises(ValueError, match="post_layers applies to the CNP network only"):
        build_np_network("tnp", post_layers=1)
    with pytest.raises(ValueError, match="variance_bound applies to the CNP network only"):
        build_np_network("anp", variance_bound="scale")
    with pytest.raises(ValueError, match="post_layers must be an int >= 0, got -1"):
        build_np_network("cnp", post_layers=-1)

"""The DESAN supernet: mixed ops, masks, progressive discretisation, derivation and the weight hand-over."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from mtlrec.data.dataset import Batch
from mtlrec.nas.supernet import MixedOp, SearchSpace, Supernet, frozen_batch_norm_statistics
from mtlrec.schema import FeatureSchema

BatchFactory = Callable[[FeatureSchema, int, int], Batch]
SPACE = SearchSpace(
    embed_dim=4,
    num_experts=3,
    num_blocks=2,
    block_dim=8,
    candidate_ops=("identity", "mlp:4", "mlp:16"),
    tower={"hidden": [8], "dropout": 0.1, "batch_norm": True},
)


def trained_supernet(schema: FeatureSchema, factory: BatchFactory, steps: int = 4) -> Supernet:
    """A supernet after a few search-phase steps, with spread-out architecture parameters."""
    torch.manual_seed(0)
    net = Supernet(SPACE, schema)
    with torch.no_grad():
        for _, op in net.mixed_ops():
            op.alpha.normal_(0.0, 2.0)
        net.single.log_alpha.normal_(0.0, 2.0)
        net.interaction.log_alpha.normal_(0.0, 2.0)
        for mask in net.routing_masks():
            mask.log_alpha.uniform_(0.5, 3.0)  # every consumer keeps experts: no repair
    net.set_phase("search", 0.5)
    optimizer = torch.optim.Adam(net.weight_parameters(), lr=1e-2)
    for step in range(steps):
        batch = factory(schema, 64, step)
        _, losses = net.compute_loss(batch.features, batch.labels)
        optimizer.zero_grad()
        torch.stack(list(losses.values())).sum().backward()
        optimizer.step()
    return net


def test_mixed_op_is_the_softmax_mixture_of_its_candidates_and_a_fixed_op_runs_alone() -> None:
    torch.manual_seed(0)
    op = MixedOp(6, 5, ("identity", "mlp:4", "mlp:8"), dropout=0.0, alpha_std=1.0).eval()
    op.temperature = 0.7
    x = torch.randn(10, 6)
    p = torch.softmax(op.alpha / 0.7, dim=0)
    expected = sum(p[i] * op._run(i, x) for i in range(3))
    assert torch.allclose(op(x), expected, atol=1e-6)
    assert op.project is not None  # identity 6 -> 5 is a bias-free projection
    op.fixed = 2
    assert torch.equal(op(x), op._run(2, x))


def test_fixed_op_updates_its_slice_of_the_fused_batch_norm_statistics() -> None:
    torch.manual_seed(0)
    op = MixedOp(6, 5, ("mlp:4", "mlp:8"), dropout=0.0, alpha_std=1.0).train()
    assert op.norm is not None and op.norm.running_mean is not None
    op.fixed = 1
    before = op.norm.running_mean.clone()
    op(torch.randn(32, 6) + 3.0)
    changed = (op.norm.running_mean != before).nonzero().flatten().tolist()
    assert changed and min(changed) >= 4  # only the channels of mlp:8 (4..11) moved


def test_masks_are_one_in_warmup_sampled_in_search_and_deterministic_in_eval(tiny_schema: FeatureSchema) -> None:
    torch.manual_seed(0)
    net = Supernet(SPACE, tiny_schema)
    assert torch.equal(net.single(), torch.ones(3, 4))
    net.set_phase("search", 1.0)
    net.train()
    samples = torch.stack([net.single() for _ in range(50)])
    assert samples.min() >= 0 and samples.max() <= 1 and samples.std() > 0
    net.eval()
    assert torch.equal(net.single(), net.single())


def test_parameters_split_by_role_into_architecture_and_weights(tiny_schema: FeatureSchema) -> None:
    net = Supernet(SPACE, tiny_schema)
    arch = {id(p) for p in net.arch_parameters()}
    weights = {id(p) for p in net.weight_parameters()}
    assert not arch & weights and arch | weights == {id(p) for p in net.parameters()}
    # 3 experts × 2 blocks × 2 levels α, the two navigator masks and one routing mask per level
    assert len(arch) == 12 + 2 + 2


def test_discretize_fixes_the_most_confident_share_of_blocks_then_everything(
    tiny_schema: FeatureSchema, batch_factory: BatchFactory
) -> None:
    net = trained_supernet(tiny_schema, batch_factory)
    entropies = sorted(op.entropy() for _, op in net.mixed_ops())
    fixed = net.discretize(1 / 3)
    assert fixed["ops"] == math.ceil(12 / 3) and fixed["masks"] == 0
    assert [f["entropy"] for f in fixed["fixed_ops"]] == pytest.approx(entropies[:4])
    for entry in fixed["fixed_ops"]:
        assert entry["p"] == max(entry["p"], 1 / 3)
    assert net.free_counts() == {"ops": 8, "masks": 2 * 3 * 4 + 3 * 3 + 2 * 3}
    fixed = net.discretize(1.0)
    assert fixed["ops"] == 8 and net.is_discrete()
    assert torch.equal(net.single.fixed, (net.single.log_alpha > 0).float())


def test_discrete_model_inherits_the_weights_and_computes_what_the_supernet_computes(
    tiny_schema: FeatureSchema, batch_factory: BatchFactory
) -> None:
    net = trained_supernet(tiny_schema, batch_factory)
    net.discretize(1.0)
    arch, repairs = net.derive()
    assert not repairs
    model = net.to_discrete(arch)
    net.eval()
    model.eval()
    batch = batch_factory(tiny_schema, 100, 7)
    expected, got = net(batch.features), model(batch.features)
    for task in ("ctr", "cvr"):
        assert torch.allclose(expected[task], got[task], atol=1e-5), task
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in net.weight_parameters())


def test_derive_repairs_empty_routing_and_prunes_experts_nothing_reads(tiny_schema: FeatureSchema) -> None:
    torch.manual_seed(0)
    net = Supernet(SPACE, tiny_schema)
    first, last = net.routing_masks()
    with torch.no_grad():
        first.log_alpha.fill_(1.0)
        last.log_alpha.fill_(-1.0)  # no head reads any expert ...
        last.log_alpha[0, 2] = -0.5  # ... the ctr head's best is e2_2, cvr's is e2_0 (first of the ties)
    net.discretize(1.0)
    arch, repairs = net.derive()
    assert repairs == ["ctr read no expert: kept e2_2", "cvr read no expert: kept e2_0"]
    assert list(arch.levels[1].experts) == ["e2_0", "e2_2"]  # e2_1 feeds no head: pruned
    assert arch.levels[1].routing == {"ctr": ("e2_2",), "cvr": ("e2_0",)}
    assert set(arch.levels[0].routing or {}) == {"e2_0", "e2_2"}
    assert arch.schema_hash == tiny_schema.hash() and arch.fields == ("user", "item", "category", "site")


def test_frozen_batch_norm_statistics_leave_running_statistics_alone(
    tiny_schema: FeatureSchema, batch_factory: BatchFactory
) -> None:
    net = trained_supernet(tiny_schema, batch_factory, steps=1)
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    batch = batch_factory(tiny_schema, 64, 5)
    with frozen_batch_norm_statistics(net):
        net.compute_loss(batch.features, batch.labels)
    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    net.compute_loss(batch.features, batch.labels)  # outside, the statistics move again
    assert any(not torch.equal(v, net.state_dict()[k]) for k, v in before.items())

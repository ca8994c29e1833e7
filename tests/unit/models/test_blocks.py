"""Blocks: the input embedding, MLP, Tower and Gate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlrec.config import validate
from mtlrec.data.dataset import Batch
from mtlrec.errors import ConfigError
from mtlrec.models.blocks import MLP, FeatureEmbedding, Gate, MLPConfig, Tower
from mtlrec.schema import DENSE, SCENARIO, SPARSE_IDS, DenseField, FeatureSchema, SparseField, TaskSpec


def test_feature_embedding_output_dim_counts_scenario_as_a_field(tiny_schema: FeatureSchema) -> None:
    emb = FeatureEmbedding(tiny_schema, embed_dim=4)
    assert emb.output_dim == (3 + 1) * 4 + 2


def test_feature_embedding_shape_when_full_schema(tiny_schema: FeatureSchema, tiny_batch: Batch) -> None:
    emb = FeatureEmbedding(tiny_schema, embed_dim=4)
    x0 = emb(tiny_batch.features)
    assert x0.shape == (tiny_batch.size, emb.output_dim)
    # dense values are appended as they are, last
    assert torch.equal(x0[:, -2:], tiny_batch.features[DENSE])


def test_feature_embedding_uses_one_table_sized_by_all_vocabularies(tiny_schema: FeatureSchema) -> None:
    emb = FeatureEmbedding(tiny_schema, embed_dim=4)
    assert emb.embedding is not None
    assert emb.embedding.num_embeddings == 12 + 9 + 5 + 2
    assert emb.offsets.tolist() == [0, 12, 21, 26]
    # the offsets are derived from the schema: not part of the learned state
    assert "offsets" not in emb.state_dict()


def test_feature_embedding_offsets_give_each_field_its_own_rows(tiny_schema: FeatureSchema) -> None:
    emb = FeatureEmbedding(tiny_schema, embed_dim=4)
    assert emb.embedding is not None
    features = {
        SPARSE_IDS: torch.full((1, 3), 1),  # the same id in every field
        DENSE: torch.zeros(1, 2),
        SCENARIO: torch.tensor([1]),
    }
    fields = emb(features)[0, :16].reshape(4, 4)  # [F + 1, k]
    expected = emb.embedding.weight[torch.tensor([0 + 1, 12 + 1, 21 + 1, 26 + 1])]  # [F + 1, k]
    assert torch.equal(fields, expected)
    assert len({tuple(row.tolist()) for row in fields}) == 4


def test_feature_embedding_init_is_small_normal(tiny_schema: FeatureSchema) -> None:
    torch.manual_seed(0)
    schema = tiny_schema.model_copy(update={"sparse": (SparseField(name="user", vocab_size=5000),)})
    emb = FeatureEmbedding(schema, embed_dim=8)
    assert emb.embedding is not None
    assert emb.embedding.weight.std().item() == pytest.approx(1e-2, rel=0.05)


def test_feature_embedding_when_dense_only() -> None:
    schema = FeatureSchema(dense=(DenseField(name="a"), DenseField(name="b")), tasks=(TaskSpec(name="y"),))
    emb = FeatureEmbedding(schema, embed_dim=4)
    assert emb.embedding is None
    assert emb.output_dim == 2
    dense = torch.randn(3, 2)
    assert torch.equal(emb({DENSE: dense}), dense)


def test_feature_embedding_when_sparse_only() -> None:
    schema = FeatureSchema(sparse=(SparseField(name="u", vocab_size=4),), tasks=(TaskSpec(name="y"),))
    emb = FeatureEmbedding(schema, embed_dim=3)
    assert emb({SPARSE_IDS: torch.tensor([[0], [3]])}).shape == (2, 3)


def test_mlp_shapes_and_output_dim() -> None:
    mlp = MLP(6, MLPConfig(hidden=(8, 4)))
    assert mlp.output_dim == 4
    assert mlp(torch.randn(5, 6)).shape == (5, 4)


def test_mlp_is_identity_when_no_hidden_layer() -> None:
    mlp = MLP(6, MLPConfig(hidden=()))
    x = torch.randn(5, 6)
    assert mlp.output_dim == 6
    assert torch.equal(mlp(x), x)


def test_mlp_layer_order_with_batch_norm_and_dropout() -> None:
    mlp = MLP(6, MLPConfig(hidden=(8, 4), activation="prelu", dropout=0.5, batch_norm=True))
    kinds = [type(m) for m in mlp.layers]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.PReLU, nn.Dropout] * 2


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu", "tanh", "prelu"])
def test_mlp_accepts_every_activation(activation: str) -> None:
    cfg = MLPConfig.model_validate({"hidden": [3], "activation": activation})
    assert MLP(2, cfg)(torch.randn(4, 2)).shape == (4, 3)


def test_mlp_dropout_is_active_in_train_and_off_in_eval() -> None:
    torch.manual_seed(0)
    mlp = MLP(16, MLPConfig(hidden=(64,), dropout=0.5))
    x = torch.randn(32, 16)
    assert not torch.equal(mlp(x), mlp(x))
    mlp.eval()
    assert torch.equal(mlp(x), mlp(x))


def test_mlp_batch_norm_uses_running_stats_in_eval() -> None:
    mlp = MLP(4, MLPConfig(hidden=(3,), batch_norm=True))
    mlp(torch.randn(64, 4) * 5 + 3)
    bn = mlp.layers[1]
    assert isinstance(bn, nn.BatchNorm1d)
    assert bn.num_batches_tracked is not None and bn.num_batches_tracked.item() == 1
    mlp.eval()
    single = mlp(torch.randn(1, 4))  # a batch of one works in eval
    assert single.shape == (1, 3)


@pytest.mark.parametrize(
    "bad", [{"hidden": [0]}, {"hidden": [4], "dropout": 1.0}, {"hidden": [4], "activation": "swish"}, {}]
)
def test_mlp_config_refuses_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        validate(MLPConfig, bad, "mlp")


def test_tower_returns_one_logit_per_row() -> None:
    tower = Tower(6, MLPConfig(hidden=(4,)))
    assert tower(torch.randn(5, 6)).shape == (5,)


def test_gate_weights_sum_to_one_when_linear() -> None:
    gate = Gate(6, num_experts=3, hidden=None)
    weights = gate(torch.randn(7, 6))
    assert weights.shape == (7, 3)
    assert torch.allclose(weights.sum(dim=1), torch.ones(7))
    assert bool((weights >= 0).all())


def test_gate_weights_sum_to_one_with_hidden_layers() -> None:
    gate = Gate(6, num_experts=4, hidden=MLPConfig(hidden=(5,)))
    weights = gate(torch.randn(7, 6))
    assert weights.shape == (7, 4)
    assert torch.allclose(weights.sum(dim=1), torch.ones(7))

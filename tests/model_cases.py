"""One small config per registered model, shared by the model, training, export and serving tests.

Every registered model must have an entry in ``CASES``; the coverage tests fail for a model without one. A case is
a function of two block configs, so the same layout serves both kinds of tests:

* ``regularized=True``: dropout and batch norm on, so that a train-mode leftover (an exporter that forgot
  ``eval()``, a non-deterministic gate) shows;
* ``regularized=False``: plain layers, for the tests that train a model and check what it learned.

``case_config(name, track=..., task=...)`` adds the track and, for the msl track (one head per scenario for ONE
task), the task to learn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Block = dict[str, Any]
Case = Callable[[Block, Block], dict[str, Any]]

# Funnel models (ctr -> cvr); every other model runs on any schema.
FUNNEL_MODELS = frozenset({"esmm", "aitm", "escm2"})

CASES: dict[str, Case] = {
    "single_task": lambda mlp, tower: {"embed_dim": 4, "bottom": mlp, "tower": tower},
    "mlp": lambda mlp, tower: {"embed_dim": 4, "dnn": mlp},
    "cross_stitch": lambda mlp, tower: {
        "embed_dim": 4,
        "shared": mlp,
        "column": {**mlp, "hidden": [16, 8]},
        "tower": tower,
    },
    "shared_bottom": lambda mlp, tower: {"embed_dim": 4, "bottom": mlp, "tower": tower},
    "esmm": lambda mlp, tower: {"embed_dim": 4, "ctr_tower": mlp, "cvr_tower": mlp},
    "mmoe": lambda mlp, tower: {
        "embed_dim": 4,
        "num_experts": 2,
        "expert": mlp,
        "gate": {"hidden": [8]},
        "tower": tower,
    },
    "ple": lambda mlp, tower: {
        "embed_dim": 4,
        "num_levels": 2,
        "shared_experts": 1,
        "specific_experts": 1,
        "expert": mlp,
        "gate": {"hidden": [8]},
        "tower": tower,
    },
    "snr": lambda mlp, tower: {
        "embed_dim": 4,
        "num_experts": 2,
        "expert": {**mlp, "hidden": [16, 8]},
        "tower": tower,
    },
    "mssm": lambda mlp, tower: {
        "embed_dim": 4,
        "num_experts": 2,
        "expert": {**mlp, "hidden": [16, 8]},
        "tower": tower,
    },
    "aitm": lambda mlp, tower: {"embed_dim": 4, "tower": mlp},
    "escm2": lambda mlp, tower: {
        "embed_dim": 4,
        "ctr_tower": mlp,
        "cvr_tower": mlp,
        "variant": "dr",
        "imputation_tower": mlp,
    },
    "star": lambda mlp, tower: {"embed_dim": 4, "layers": [16, 8], "aux": {"hidden": [8]}},
    "apg": lambda mlp, tower: {"embed_dim": 4, "layers": [16, 8], "rank_divisor": 2},
    "hmoe": lambda mlp, tower: {
        "embed_dim": 4,
        "num_experts": 2,
        "expert": mlp,
        "gate": {"hidden": [8]},
        "tower": tower,
        "weight_net": {"hidden": [8]},
    },
    "pepnet": lambda mlp, tower: {"embed_dim": 4, "layers": [16, 8], "gate_hidden": 8},
    # A tiny fixed architecture with no field or head names in it, so that it fits every test schema: partial
    # routing between the levels, every head reading both last-level experts (routing None).
    "automtl": lambda mlp, tower: {
        "embed_dim": 4,
        "architecture": {
            "embed_dim": 4,
            "block_dim": 8,
            "op_dropout": mlp.get("dropout", 0.0),
            "tower": tower,
            "levels": [
                {
                    "experts": {
                        "e1_0": {"blocks": ["mlp:16", "identity"]},
                        "e1_1": {"blocks": ["identity", "mlp:8"]},
                        "e1_2": {"blocks": ["mlp:8"]},
                    },
                    "routing": {"e2_0": ["e1_0", "e1_1"], "e2_1": ["e1_2"]},
                },
                {"experts": {"e2_0": {"blocks": ["mlp:16"]}, "e2_1": {"blocks": ["identity", "mlp:8"]}}},
            ],
        },
    },
}

_REGULARIZED = ({"hidden": [16], "dropout": 0.2, "batch_norm": True}, {"hidden": [8], "dropout": 0.2})
_PLAIN = ({"hidden": [16]}, {"hidden": [8]})


def case_config(name: str, *, track: str = "mtl", regularized: bool = True, task: str | None = None) -> dict[str, Any]:
    """The small config of model ``name`` on ``track`` (on msl, ``task`` names the one task to learn).

    Raises:
        KeyError: the model has no case (the coverage tests report it by name).
    """
    mlp, tower = _REGULARIZED if regularized else _PLAIN
    config = CASES[name](dict(mlp), dict(tower))
    if track != "mtl":
        config["track"] = track
    if track == "msl" and task is not None:
        config["tasks"] = [task]
    return config

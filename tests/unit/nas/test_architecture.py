"""The architecture file: versioned JSON round trip, structural validation, checks against a schema, summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mtlrec.errors import ConfigError, ModelError
from mtlrec.nas.architecture import ARCH_FORMAT, ARCH_FORMAT_VERSION, Architecture, parse_op


def two_levels(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "schema_hash": "00000000000000aa",
        "fields": ["user", "item", "site"],
        "embed_dim": 4,
        "block_dim": 8,
        "levels": [
            {
                "experts": {
                    "e1_0": {"blocks": ["mlp:16", "identity"], "single": ["user"], "interaction": ["user", "item"]},
                    "e1_1": {"blocks": ["identity"], "single": ["item", "site"], "interaction": []},
                },
                "routing": {"e2_0": ["e1_0", "e1_1"], "e2_1": ["e1_1"]},
            },
            {
                "experts": {"e2_0": {"blocks": ["mlp:8"]}, "e2_1": {"blocks": ["identity"]}},
                "routing": {"ctr": ["e2_0"], "cvr": ["e2_0", "e2_1"]},
            },
        ],
    }
    data.update(changes)
    return data


def test_architecture_round_trips_through_json_with_format_and_version(tmp_path: Path) -> None:
    arch = Architecture.model_validate(two_levels(search={"seed": 3}))
    path = arch.save(tmp_path / "arch.json")
    stored = json.loads(path.read_text())
    assert stored["format"] == ARCH_FORMAT and stored["format_version"] == ARCH_FORMAT_VERSION
    assert stored["levels"][0]["experts"]["e1_0"]["blocks"] == ["mlp:16", "identity"]
    assert Architecture.load(path) == arch


def test_digest_ignores_the_search_provenance_only() -> None:
    arch = Architecture.model_validate(two_levels())
    assert arch.model_copy(update={"search": {"seconds": 1.0}}).digest() == arch.digest()
    assert Architecture.model_validate(two_levels(block_dim=16)).digest() != arch.digest()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "something-else"}, "not an AutoMTL architecture"),
        ({"format_version": 99}, "format_version 99 is not supported"),
        ({"levelz": []}, "levelz: unknown key"),
    ],
)
def test_load_refuses_other_formats_versions_and_unknown_keys(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    path = tmp_path / "arch.json"
    path.write_text(json.dumps({"format": ARCH_FORMAT, "format_version": 1, **two_levels(), **change}))
    with pytest.raises(ConfigError, match=message):
        Architecture.load(path)


def test_load_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="architecture file not found"):
        Architecture.load(tmp_path / "nope.json")


def _level(arch: dict[str, Any], i: int) -> dict[str, Any]:
    level: dict[str, Any] = arch["levels"][i]
    return level


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda a: _level(a, 0)["routing"].update(e2_1=[]), "reads no expert"),
        (lambda a: _level(a, 0)["routing"].update(e2_1=["e9"]), "must read distinct experts"),
        (lambda a: _level(a, 0)["routing"].pop("e2_1"), "one row per level-2 expert"),
        (lambda a: _level(a, 0)["routing"].update(e2_0=["e1_1"]), r"experts \['e1_0'\] feed no consumer"),
        (lambda a: _level(a, 1)["experts"].update(e1_0={"blocks": ["identity"]}), "expert names used twice"),
        (lambda a: _level(a, 1)["experts"]["e2_0"].update(single=["user"]), "only first-level experts"),
        (lambda a: _level(a, 1)["experts"]["e2_0"].update(blocks=["conv:3"]), "blocks.0"),
        (lambda a: _level(a, 0)["experts"]["e1_0"].update(single=["user", "user"]), "names a field twice"),
    ],
)
def test_invalid_structures_are_refused_with_the_reason(edit: Any, message: str) -> None:
    data = two_levels()
    edit(data)
    with pytest.raises(ConfigError, match=message):
        Architecture.from_dict({"format": ARCH_FORMAT, "format_version": 1, **data})


def test_check_for_refuses_another_schema_unknown_fields_and_heads() -> None:
    arch = Architecture.model_validate(two_levels())
    good = {"schema_hash": "00000000000000aa", "fields": ["user", "item", "site"], "heads": ["ctr", "cvr"]}
    arch.check_for(**good, num_dense=0)
    with pytest.raises(ModelError, match="schema 00000000000000aa, not ffff"):
        arch.check_for(**{**good, "schema_hash": "ffff"}, num_dense=0)
    with pytest.raises(ModelError, match=r"does not embed: \['site'\]"):
        arch.check_for(**{**good, "fields": ["user", "item"]}, num_dense=0)
    with pytest.raises(ModelError, match=r"the model's heads are \['ctr'\]"):
        arch.check_for(**{**good, "heads": ["ctr"]}, num_dense=0)


def test_parse_op_names_kind_and_width() -> None:
    assert parse_op("identity") == ("identity", 0)
    assert parse_op("mlp:1024") == ("mlp", 1024)
    with pytest.raises(ConfigError, match="unknown op `mlp:x`"):
        parse_op("mlp:x")


def test_summary_names_ops_inputs_heads_and_dropped_fields() -> None:
    arch = Architecture.model_validate(two_levels(fields=["user", "item", "site", "noise"]))
    text = arch.summary()
    assert "e1_0     mlp:16 -> identity" in text
    assert "<- e1_0, e1_1" in text and "cvr" in text
    assert "fields no expert reads: noise" in text

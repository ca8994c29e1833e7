"""The model registry: registration, lookup and config validation."""

from __future__ import annotations

import pytest

from mtlrec.errors import ConfigError, ModelError
from mtlrec.models import MultiTaskModel, build_model, get_model_class, list_models, register_model, registry
from mtlrec.schema import FeatureSchema, SparseField


def test_register_model_refuses_a_name_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("dummy_model")
    class Dummy(MultiTaskModel):
        """A stand-in."""

    assert get_model_class("dummy_model") is Dummy
    with pytest.raises(ValueError, match="dummy_model"):
        register_model("dummy_model")(Dummy)


def test_register_model_refuses_a_builtin_name_twice() -> None:
    class Other(MultiTaskModel):
        """A stand-in."""

    with pytest.raises(ValueError, match="registered twice"):
        register_model("mmoe")(Other)
    assert get_model_class("mmoe").__name__ == "MMoE"


def test_get_model_class_lists_the_registered_names_when_unknown() -> None:
    with pytest.raises(ModelError, match="unknown model `nope`") as err:
        get_model_class("nope")
    for name in ("esmm", "mmoe", "shared_bottom"):
        assert name in str(err.value)


def test_list_models_is_sorted_with_summaries() -> None:
    infos = list_models()
    names = [info.name for info in infos]
    assert names == sorted(names)
    assert {"esmm", "mmoe", "shared_bottom"} <= set(names)
    assert all(info.summary and info.tracks for info in infos)


def test_build_model_refuses_an_unknown_config_key_naming_it(tiny_schema: FeatureSchema) -> None:
    with pytest.raises(ConfigError, match="bogus"):
        build_model("mmoe", {"bogus": 1}, tiny_schema)


def test_build_model_refuses_an_unknown_nested_key_naming_its_path(tiny_schema: FeatureSchema) -> None:
    with pytest.raises(ConfigError, match=r"expert\.hiden"):
        build_model("mmoe", {"expert": {"hiden": [4]}}, tiny_schema)


def test_build_model_refuses_an_unfitted_schema(tiny_schema: FeatureSchema) -> None:
    unfitted = tiny_schema.model_copy(update={"sparse": (SparseField(name="user"),)})
    with pytest.raises(ModelError, match="fitted"):
        build_model("shared_bottom", None, unfitted)


def test_build_model_accepts_a_config_object_of_its_class(tiny_schema: FeatureSchema) -> None:
    config = get_model_class("shared_bottom").config_class(embed_dim=3)
    assert build_model("shared_bottom", config, tiny_schema).config is config
    with pytest.raises(ModelError, match="expects a"):
        build_model("mmoe", config, tiny_schema)

"""The searched architecture: a versioned, self-describing JSON file, keyed by names rather than positions.

An :class:`Architecture` is everything needed to build the discrete ``automtl`` model (and nothing about its
weights). It is what ``mtlrec search`` writes and ``mtlrec train --model automtl --arch FILE`` reads; the model's
config carries it whole, so a run directory's ``config.json`` describes the network by itself.

Structure (automtl.md §1, §3.2), for L levels::

    level 1 experts   e: blocks (op names), and the navigator: ``single`` = the fields whose raw embeddings the
                      expert sees, ``interaction`` = the fields taking part in its FM term (None = every field)
    level l experts   e: blocks; input = gated mixture of the level l-1 experts in ``levels[l-2].routing[e]``
    heads             h: tower over the gated mixture of the last-level experts in ``levels[-1].routing[h]``

``routing`` of a level maps each consumer (an expert of the next level, or a head name at the last level) to the
experts of this level it reads; None means every consumer reads every expert (MMoE-like). Every block maps to
``block_dim``; ops are ``identity`` (a bias-free projection when the widths differ) or ``mlp:<h>``
(Dropout → Linear(in→h) → BatchNorm → ReLU → Linear(h→block_dim)).

Example file (abridged)::

    {"format": "mtlrec.automtl-architecture", "format_version": 1, "schema_hash": "3f2a...",
     "fields": ["user", "item", "site"], "embed_dim": 4, "block_dim": 32, "op_dropout": 0.1,
     "tower": {"hidden": [16], "dropout": 0.0, "batch_norm": false},
     "levels": [{"experts": {"e1_0": {"blocks": ["mlp:64", "identity"], "single": ["user", "item"],
                                      "interaction": ["item", "site"]}, ...},
                 "routing": {"e2_0": ["e1_0"], ...}},
                {"experts": {"e2_0": {"blocks": ["mlp:32", "mlp:16"]}}, "routing": {"ctr": ["e2_0"], ...}}]}

Example:
    >>> arch = Architecture(embed_dim=4, block_dim=8, levels=(
    ...     LevelSpec(experts={"a": ExpertSpec(blocks=("mlp:16",)), "b": ExpertSpec(blocks=("identity",))}),))
    >>> arch.expert_names()
    ['a', 'b']
    >>> parse_op("mlp:16")
    ('mlp', 16)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PositiveInt, StringConstraints, model_validator

from mtlrec.config import StrictModel, validate
from mtlrec.errors import ConfigError, ModelError

ARCH_FORMAT = "mtlrec.automtl-architecture"
ARCH_FORMAT_VERSION = 1

OpName = Annotated[str, StringConstraints(pattern=r"^(identity|mlp:[1-9][0-9]*)$")]
ExpertName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")]


def parse_op(name: str) -> tuple[Literal["identity", "mlp"], int]:
    """Split an op name into its kind and hidden width (0 for identity).

    Example:
        >>> parse_op("identity"), parse_op("mlp:256")
        (('identity', 0), ('mlp', 256))
    """
    if name == "identity":
        return "identity", 0
    kind, _, width = name.partition(":")
    if kind != "mlp" or not width.isdigit() or int(width) < 1:
        raise ConfigError(f"unknown op `{name}`", hint="ops are `identity` and `mlp:<width>` (e.g. mlp:64)")
    return "mlp", int(width)


class TowerSpec(StrictModel):
    """A head's tower: Linear → (BatchNorm) → ReLU → (Dropout) per hidden width, then a Linear to one logit."""

    hidden: tuple[PositiveInt, ...] = Field(default=(64,), description="hidden widths (AutoMTL: [64])")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout after each hidden layer")
    batch_norm: bool = Field(default=False, description="BatchNorm between each Linear and its ReLU")


class ExpertSpec(StrictModel):
    """One expert: its blocks' ops and, on the first level, its feature navigator."""

    blocks: tuple[OpName, ...] = Field(min_length=1, description="the op of each block, input to output")
    single: tuple[str, ...] | None = Field(
        default=None, description="first level: fields whose raw embeddings the expert sees; None = all"
    )
    interaction: tuple[str, ...] | None = Field(
        default=None, description="first level: fields in the expert's FM interaction term; None = all"
    )

    @model_validator(mode="after")
    def _distinct(self) -> ExpertSpec:
        for key in ("single", "interaction"):
            names = getattr(self, key)
            if names is not None and len(set(names)) != len(names):
                raise ValueError(f"`{key}` names a field twice: {list(names)}")
        return self


class LevelSpec(StrictModel):
    """The experts of one level and which of them each consumer (next-level expert or head) reads."""

    experts: dict[ExpertName, ExpertSpec] = Field(min_length=1, description="expert name -> expert, in order")
    routing: dict[str, tuple[str, ...]] | None = Field(
        default=None,
        description="consumer -> the experts of this level it mixes (its gate spans them); None = every consumer "
        "reads every expert. Consumers: the next level's experts, or the head names at the last level.",
    )


class Architecture(StrictModel):
    """A discrete AutoMTL network: ops per block, expert routing, feature navigators, dimensions.

    ``schema_hash`` and ``fields`` tie a searched architecture to the data it was searched on (None = generic, as
    in the test configs). ``search`` holds the search's provenance (seed, schedule, final probabilities, cost); it
    is not needed to build the model.
    """

    format: Literal["mtlrec.automtl-architecture"] = "mtlrec.automtl-architecture"
    format_version: int = Field(default=ARCH_FORMAT_VERSION, description="bumped on any incompatible change")
    schema_hash: str | None = Field(default=None, description="hash of the feature schema searched on")
    fields: tuple[str, ...] | None = Field(
        default=None, description="the embedded fields (sparse fields, then the scenario) the navigator chose from"
    )
    embed_dim: PositiveInt = Field(default=8, description="width of every field embedding")
    block_dim: PositiveInt = Field(default=64, description="output width of every block (AutoMTL: 64)")
    op_dropout: float = Field(default=0.2, ge=0.0, lt=1.0, description="dropout on the input of mlp ops")
    tower: TowerSpec = Field(default_factory=TowerSpec)
    levels: tuple[LevelSpec, ...] = Field(min_length=1)
    search: dict[str, Any] | None = Field(default=None, description="provenance of a searched architecture")

    @model_validator(mode="after")
    def _check(self) -> Architecture:
        if self.format_version != ARCH_FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version} is not supported (this version reads {ARCH_FORMAT_VERSION})"
            )
        names = self.expert_names()
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"expert names used twice: {dupes}")
        for i, level in enumerate(self.levels):
            if i > 0 and any(e.single is not None or e.interaction is not None for e in level.experts.values()):
                raise ValueError(f"level {i + 1}: only first-level experts have feature navigators")
            if level.routing is None:
                continue
            own = list(level.experts)
            for consumer, inputs in level.routing.items():
                if not inputs:
                    raise ValueError(f"level {i + 1}: consumer `{consumer}` reads no expert (an empty routing row)")
                unknown = [n for n in inputs if n not in own]
                if unknown or len(set(inputs)) != len(inputs):
                    raise ValueError(
                        f"level {i + 1}: consumer `{consumer}` must read distinct experts of this level {own}, "
                        f"got {list(inputs)}"
                    )
            if i + 1 < len(self.levels):
                expected = list(self.levels[i + 1].experts)
                if sorted(level.routing) != sorted(expected):
                    raise ValueError(
                        f"level {i + 1}: routing must have one row per level-{i + 2} expert {expected}, "
                        f"got {list(level.routing)}"
                    )
            used = {n for inputs in level.routing.values() for n in inputs}
            unused = [n for n in own if n not in used]
            if unused and i + 1 < len(self.levels):
                raise ValueError(f"level {i + 1}: experts {unused} feed no consumer; remove them")
        return self

    # ------------------------------------------------------------------------------------------------ queries
    def expert_names(self) -> list[str]:
        """Every expert's name, level by level."""
        return [name for level in self.levels for name in level.experts]

    def inputs_of(self, level: int, consumer: str) -> list[str]:
        """The experts of ``levels[level]`` that ``consumer`` mixes (all of them without routing)."""
        spec = self.levels[level]
        return list(spec.experts) if spec.routing is None else list(spec.routing[consumer])

    def check_for(self, *, schema_hash: str, fields: list[str], heads: list[str], num_dense: int) -> None:
        """Refuse an architecture that does not fit a schema and head layout, naming what is wrong.

        Args:
            schema_hash: the hash of the schema the model is built for.
            fields: the embedded fields (sparse fields, then the scenario).
            heads: the model's head names (task names on the mtl track).
            num_dense: the number of dense fields.

        Raises:
            ModelError: on a schema-hash mismatch, an unknown field, a head without routing, an expert with no
                input, or an unused last-level expert.
        """
        if self.schema_hash is not None and self.schema_hash != schema_hash:
            raise ModelError(
                f"the architecture was searched on data with schema {self.schema_hash}, not {schema_hash}",
                hint="search again on this data (`mtlrec search`), or use the architecture of this data",
            )
        for name, expert in self.levels[0].experts.items():
            for key in ("single", "interaction"):
                chosen = getattr(expert, key)
                unknown = [f for f in chosen or () if f not in fields]
                if unknown:
                    raise ModelError(
                        f"expert `{name}`: `{key}` names fields the schema does not embed: {unknown}",
                        hint=f"embedded fields: {', '.join(fields) or '(none)'}",
                    )
            n_single = len(fields) if expert.single is None else len(expert.single)
            n_inter = len(fields) if expert.interaction is None else len(expert.interaction)
            if n_single == 0 and n_inter < 2 and num_dense == 0:
                raise ModelError(
                    f"expert `{name}` sees no input: no field, no interaction term (it needs 2 fields) and no dense"
                )
        last = self.levels[-1]
        if last.routing is not None:
            if sorted(last.routing) != sorted(heads):
                raise ModelError(
                    f"the last level's routing names consumers {sorted(last.routing)}, but the model's heads are "
                    f"{heads}",
                    hint="routing keys of the last level are the head names (task names on the mtl track)",
                )
            used = {n for inputs in last.routing.values() for n in inputs}
            unused = [n for n in last.experts if n not in used]
            if unused:
                raise ModelError(f"last-level experts {unused} feed no head; remove them")

    def digest(self) -> str:
        """A 16-hex-digit hash of the network (everything but the ``search`` provenance)."""
        canonical = json.dumps(self.model_dump(mode="json", exclude={"search"}), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    # ---------------------------------------------------------------------------------------------------- I/O
    def save(self, path: Path) -> Path:
        """Write the architecture as indented JSON."""
        path.write_text(self.model_dump_json(indent=1, exclude_none=True) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Architecture:
        """Read an architecture file, with a clear error for a missing file, another format or version."""
        if not path.is_file():
            raise ConfigError(f"architecture file not found: {path}", hint="write one with `mtlrec search`")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: Any, where: str = "architecture") -> Architecture:
        """Validate a parsed architecture (the ``format`` and ``format_version`` are checked first)."""
        if not isinstance(data, dict) or data.get("format") != ARCH_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ConfigError(
                f"{where}: not an AutoMTL architecture (format `{found}`, expected `{ARCH_FORMAT}`)",
                hint="pass the JSON file written by `mtlrec search --out`",
            )
        if data.get("format_version") != ARCH_FORMAT_VERSION:
            raise ConfigError(
                f"{where}: architecture format_version {data.get('format_version')} is not supported "
                f"(this mtlrec reads version {ARCH_FORMAT_VERSION})",
                hint="search again with this version of mtlrec",
            )
        return validate(cls, data, where)

    # -------------------------------------------------------------------------------------------- summary
    def summary(self) -> str:
        """A readable description: each expert's ops and inputs, each head's experts, the dropped fields."""
        lines = [
            f"AutoMTL architecture (format {self.format_version}; schema {self.schema_hash or 'any'}): "
            f"{len(self.levels)} level(s), {len(self.expert_names())} expert(s), embed_dim {self.embed_dim}, "
            f"block_dim {self.block_dim}, tower {list(self.tower.hidden)}"
        ]
        fields = list(self.fields or ())
        for i, level in enumerate(self.levels):
            lines.append(f"level {i + 1}:")
            for name, expert in level.experts.items():
                ops = " -> ".join(expert.blocks)
                line = f"  {name:<8} {ops}"
                if i == 0:
                    line += f"   fields: {_selection(expert.single, fields)}; FM over: "
                    line += _selection(expert.interaction, fields)
                else:
                    line += f"   <- {', '.join(self.inputs_of(i - 1, name))}"
                lines.append(line)
        last = self.levels[-1]
        if last.routing is None:
            lines.append(f"heads: every head reads {', '.join(last.experts)}")
        else:
            lines.append("heads:")
            lines += [f"  {head:<12} <- {', '.join(inputs)}" for head, inputs in last.routing.items()]
        if fields:
            dropped = [
                f
                for f in fields
                if all(
                    f not in (e.single if e.single is not None else fields)
                    and f not in (e.interaction if e.interaction is not None else fields)
                    for e in self.levels[0].experts.values()
                )
            ]
            lines.append(f"fields no expert reads: {', '.join(dropped) if dropped else '(none)'}")
        return "\n".join(lines)


def _selection(chosen: tuple[str, ...] | None, fields: list[str]) -> str:
    if chosen is None:
        return "all"
    if fields and len(chosen) > len(fields) / 2:
        off = [f for f in fields if f not in chosen]
        return f"{len(chosen)}/{len(fields)} (all but {', '.join(off)})" if off else f"all {len(fields)}"
    total = f"/{len(fields)}" if fields else ""
    return f"{len(chosen)}{total} ({', '.join(chosen) or '-'})"

"""Fleet files: a simulated fleet described in YAML a test engineer can read and edit.

A fleet file gives the radio, the number of nodes, the channel (mean loss, its spread
across nodes, burstiness), the nodes' current version, and per-node overrides (loss,
burst, version, faults) selected by index. ``docs/simulation.md`` has the format and a
complete example; ``sims/fleets/example-324.yaml`` is one.

Node ``i`` (0-based) is called ``f"{id_prefix}{i:0{w}d}"`` with ``w = max(4, digits of
nodes - 1)``: ``node-0000`` .. ``node-0049`` for 50 nodes, ``node-00000`` .. for 100,000,
so ids sort in index order. They are valid MQTT topic segments (no ``/``, ``+``, ``#``).

Errors while loading are :class:`FleetFileError` naming the file, the line where known,
the field path (``overrides[1].faults.corrupt_writes``) and what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from harness.yamlerrors import (
    FieldError,
    YamlFileError,
    field_path,
    pydantic_reason,
    read_yaml,
    with_lines,
)

from .channels import (
    MAX_LINK_LOSS,
    BernoulliChannel,
    Channel,
    GilbertElliottChannel,
    link_losses,
    rng_stream,
)
from .radio import PROFILES, RadioProfile, profile_with

__all__ = [
    "FaultSpec",
    "FleetFileError",
    "FleetSpec",
    "NodeOverride",
    "load_fleet",
    "parse_selector",
]

NodeKind = Literal["324", "ble"]
NODE_KINDS: tuple[str, ...] = get_args(NodeKind)
MAX_NODES = 100_000

_CONFIG = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class FleetFileError(YamlFileError):
    """A fleet file (or fleet parameters, ``source`` ``<params>``) that cannot be used."""


def _int_to_str(value: Any) -> Any:
    """YAML reads ``radio: 324`` or ``nodes: 17`` as ints; the fields hold text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


# --- node selectors -------------------------------------------------------------------

_SELECTOR_ITEM = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")
_SELECTOR_HELP = (
    "expected '*', an index like 17, a range like 3-9, or a comma-separated list like 0,5,7-8"
)


def parse_selector(text: str) -> list[tuple[int, int]] | None:
    """Node selector -> inclusive index ranges, or None for ``"*"`` (every node).

    ``"17"``, ``"3-9"``, ``"0,5,7-8"``, ``"*"``; spaces around items are allowed.
    """
    if text.strip() == "*":
        return None
    ranges = []
    for item in text.split(","):
        match = _SELECTOR_ITEM.fullmatch(item)
        if match is None:
            raise ValueError(f"node selector {text!r} is not valid: {_SELECTOR_HELP}")
        first = int(match[1])
        last = int(match[2]) if match[2] is not None else first
        if last < first:
            raise ValueError(f"node selector {text!r}: range {first}-{last} runs backwards")
        ranges.append((first, last))
    return ranges


# --- the models -----------------------------------------------------------------------


class FaultSpec(BaseModel):
    """Faults of one node; the node model acts on them. Everything off by default."""

    model_config = _CONFIG

    #: Never answers and receives nothing.
    offline: bool = False
    #: Loses power once it has stored this many blocks, then restarts with its bitmap.
    power_loss_at_block: int | None = Field(default=None, ge=1)
    #: Loses power while applying the new image.
    power_loss_during_apply: bool = False
    #: Probability that a received block is written to flash corrupted.
    corrupt_writes: float = Field(default=0.0, ge=0.0, le=1.0)
    #: Refuses the key exchange.
    refuse_key_exchange: bool = False
    #: The new image fails its self-test after the start.
    fail_self_test: bool = False
    #: Extra seconds before each answer.
    slow_answer: float = Field(default=0.0, ge=0.0)
    #: Its birth certificate is signed by a different CA.
    forged_certificate: bool = False

    def merged(self, later: FaultSpec) -> FaultSpec:
        """These faults with the fields ``later`` sets explicitly replaced by its values."""
        changes = {name: getattr(later, name) for name in later.model_fields_set}
        return self.model_copy(update=changes) if changes else self

    @property
    def active(self) -> bool:
        """True when some fault is switched on."""
        return self != _NO_FAULTS


_NO_FAULTS = FaultSpec()


class NodeOverride(BaseModel):
    """Settings for the nodes ``nodes`` selects, replacing the fleet's (later ones win).

    ``faults`` are merged field by field: a later override's ``faults`` replaces only the
    fault fields it writes.
    """

    model_config = _CONFIG

    nodes: str
    loss: float | None = Field(default=None, ge=0.0, lt=1.0)
    burst: float | None = Field(default=None, ge=1.0)
    version: str | None = Field(default=None, min_length=1)
    faults: FaultSpec | None = None

    _nodes_from_int = field_validator("nodes", mode="before")(_int_to_str)

    @field_validator("nodes")
    @classmethod
    def _check_nodes(cls, value: str) -> str:
        parse_selector(value)
        return value

    @model_validator(mode="after")
    def _sets_something(self) -> NodeOverride:
        if self.model_fields_set <= {"nodes"}:
            raise ValueError("an override must set at least one of loss, burst, version, faults")
        return self

    def indices(self, n: int) -> np.ndarray:
        """The selected node indices (sorted, distinct) in a fleet of ``n``."""
        ranges = parse_selector(self.nodes)
        if ranges is None:
            return np.arange(n)
        for first, last in ranges:
            if last >= n:
                bad = first if first >= n else last
                raise ValueError(f"node {bad} does not exist: the fleet has {n} nodes (0..{n - 1})")
        return np.unique(np.concatenate([np.arange(a, b + 1) for a, b in ranges]))


class FleetSpec(BaseModel):
    """A simulated fleet: radio, size, channel, versions and per-node overrides.

    Built from a fleet file (:func:`load_fleet`), from a dict (:meth:`from_dict`, errors
    as :class:`FleetFileError`) or with the constructor (errors as pydantic's
    ``ValidationError``, also a ValueError).
    """

    model_config = _CONFIG

    radio: str = "324"
    radio_overrides: dict[str, float | int] = Field(default_factory=dict)
    nodes: int = Field(ge=1, le=MAX_NODES)
    #: Node protocol family; defaults to the radio's name.
    kind: NodeKind
    #: Mean frame loss across the fleet.
    loss: float = Field(default=0.0, ge=0.0, le=MAX_LINK_LOSS)
    #: Standard deviation of the per-node loss (Beta distributed); 0 = every node the same.
    loss_spread: float = Field(default=0.0, ge=0.0)
    #: Mean loss burst in frames; 1 = independent loss.
    burst: float = Field(default=1.0, ge=1.0)
    version: str = Field(default="1.0.0", min_length=1)
    id_prefix: str = Field(default="node-", max_length=64)
    seed: int = Field(default=0, ge=0)
    overrides: list[NodeOverride] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _default_kind(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "kind" not in data:
            radio = _int_to_str(data.get("radio", "324"))
            if radio in NODE_KINDS:
                data = {**data, "kind": radio}
            elif not isinstance(radio, str) or radio not in PROFILES:
                # A bad radio is reported on its own, without a second error about the kind.
                data = {**data, "kind": NODE_KINDS[0]}
        return data

    _radio_from_int = field_validator("radio", "kind", mode="before")(_int_to_str)

    @field_validator("radio")
    @classmethod
    def _check_radio(cls, value: str) -> str:
        if value not in PROFILES:
            raise ValueError(f"unknown radio {value!r}; valid radios: {', '.join(PROFILES)}")
        return value

    @field_validator("radio_overrides", mode="before")
    @classmethod
    def _check_override_types(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value  # pydantic says a dict is expected
        fields = [name for name in RadioProfile.__dataclass_fields__ if name != "name"]
        for key, item in value.items():
            if key not in fields:
                raise FieldError(
                    f"not a radio profile field; valid fields: {', '.join(fields)}", str(key)
                )
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise FieldError(f"expected a number, got {item!r}", key)
        return value

    @field_validator("radio_overrides")
    @classmethod
    def _check_overrides_apply(cls, value: dict[str, float], info: ValidationInfo) -> dict:
        radio = info.data.get("radio")
        if radio is not None:
            for key, item in value.items():
                try:
                    profile_with(radio, **{key: item})
                except ValueError as exc:
                    raise FieldError(str(exc), key) from None
            profile_with(radio, **value)
        return value

    @field_validator("loss_spread")
    @classmethod
    def _check_spread(cls, value: float, info: ValidationInfo) -> float:
        loss = info.data.get("loss")
        if loss is not None and value > 0 and value**2 >= loss * (1 - loss):
            limit = (loss * (1 - loss)) ** 0.5
            raise ValueError(
                f"a spread of {value} is too wide for a mean loss of {loss}: "
                f"it must be below sqrt(loss * (1 - loss)) = {limit:.4f}"
            )
        return value

    @field_validator("id_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        bad = sorted({c for c in value if c in "/+#" or not c.isprintable() or c.isspace()})
        if bad:
            raise ValueError(
                f"node ids must be MQTT topic segments: no '/', '+', '#', spaces or control "
                f"characters, got {', '.join(map(repr, bad))}"
            )
        return value

    @field_validator("overrides")
    @classmethod
    def _check_selected_nodes(cls, value: list[NodeOverride], info: ValidationInfo) -> list:
        n = info.data.get("nodes")
        if n is not None:
            for i, override in enumerate(value):
                try:
                    override.indices(n)
                except ValueError as exc:
                    raise FieldError(str(exc), i, "nodes") from None
        return value

    # --- building ---------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, source: str = "<params>") -> FleetSpec:
        """Validate ``data``; errors as :class:`FleetFileError` naming ``source``."""
        if not isinstance(data, Mapping):
            got = "nothing" if data is None else type(data).__name__
            raise FleetFileError(
                source, [(None, None, f"expected a mapping of fleet fields, got {got}")]
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise FleetFileError(source, _problems(exc)) from None

    # --- what the simulation asks -----------------------------------------------------

    def profile(self) -> RadioProfile:
        """The radio profile with ``radio_overrides`` applied."""
        return profile_with(self.radio, **self.radio_overrides)

    def node_id(self, index: int) -> str:
        """Id of node ``index`` (0-based)."""
        if not 0 <= index < self.nodes:
            raise IndexError(f"node index {index} is outside [0, {self.nodes})")
        return f"{self.id_prefix}{index:0{self._id_width}d}"

    def node_ids(self) -> list[str]:
        """Ids of all nodes, in index order."""
        width = self._id_width
        return [f"{self.id_prefix}{i:0{width}d}" for i in range(self.nodes)]

    @property
    def _id_width(self) -> int:
        return max(4, len(str(self.nodes - 1)))

    def rng(self, name: str) -> np.random.Generator:
        """A fresh generator for the named stream of this fleet's seed (see ``rng_stream``)."""
        return rng_stream(self.seed, name)

    def per_node(self) -> tuple[np.ndarray, np.ndarray, list[str], list[FaultSpec]]:
        """Per-node loss, mean burst, version and faults, overrides applied in order.

        Losses are drawn from the ``"links"`` stream when ``loss_spread > 0``; the same spec
        always gives the same values. Nodes without faults share one ``FaultSpec()``.
        """
        n = self.nodes
        losses = link_losses(self.rng("links"), n, self.loss, self.loss_spread)
        bursts = np.full(n, self.burst)
        versions = [self.version] * n
        faults = [_NO_FAULTS] * n
        merges: dict[tuple[int, int], FaultSpec] = {}  # few distinct (before, override) pairs
        for override in self.overrides:
            selected = override.indices(n)
            if override.loss is not None:
                losses[selected] = override.loss
            if override.burst is not None:
                bursts[selected] = override.burst
            if override.version is not None:
                for i in selected.tolist():
                    versions[i] = override.version
            if override.faults is not None:
                for i in selected.tolist():
                    before = faults[i]
                    key = (id(before), id(override))
                    if key not in merges:
                        merges[key] = before.merged(override.faults)
                    faults[i] = merges[key]
        return losses, bursts, versions, faults

    def channel(self, rng: np.random.Generator | None = None) -> Channel:
        """The fleet's channel: Bernoulli when every burst is 1, else Gilbert-Elliott.

        ``rng`` draws the Gilbert-Elliott initial states now (pass ``self.rng("channel")``
        before using that generator for the frames); without it each node's initial
        state is drawn at its first frame. A Bernoulli channel draws nothing here.
        """
        losses, bursts, _, _ = self.per_node()
        if np.all(bursts == 1.0):
            return BernoulliChannel(losses)
        return GilbertElliottChannel(losses, bursts, rng=rng)


def load_fleet(path: str | Path) -> FleetSpec:
    """Read and validate a fleet file; every problem is a :class:`FleetFileError`."""
    source = str(path)
    text, data = read_yaml(path, lambda problems: FleetFileError(source, problems))
    if data is None:
        raise FleetFileError(source, [(None, None, "the file is empty; expected at least nodes:")])
    try:
        return FleetSpec.from_dict(data, source)
    except FleetFileError as exc:
        raise FleetFileError(source, with_lines(text, exc.problems)) from None


# --- error reporting ------------------------------------------------------------------


def _problems(exc: ValidationError) -> list[tuple[str | None, int | None, str]]:
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, FieldError):
            loc += cause.sub_loc
            reason = str(cause)
        else:
            reason = pydantic_reason(error, FleetSpec)
        problems.append((field_path(loc) or None, None, reason))
    return problems

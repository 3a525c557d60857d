"""Field descriptions: what a gateway in the field went through, as YAML an engineer can
write from an incident report and ``ota-hil reproduce`` can run.

A field file holds the radio and fleet (a fleet file's fields, with per-node loss, burst,
versions and faults), the firmware pushed, and a schedule of faults: node faults (node 17
loses power at block 300), the gateway's link to the broker going down or duplicating or
reordering messages, and the download stalling or being cut. What the field saw may be
written under ``observed``. ``docs/reproduction.md`` has the format; ``sims/fields/`` has
examples.

Times in the schedule are seconds of radio time since the gateway's broadcast session
began: the radio transfer is what takes minutes in the field, and the simulator keeps its
time, so a fault falls at the same point of every run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from harness.yamlerrors import field_path, pydantic_reason, read_yaml, with_lines

from .fleetfile import FaultSpec, FleetFileError, FleetSpec, NodeOverride, parse_selector

_CONFIG = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


class FieldFileError(FleetFileError):
    """A field file that cannot be used: names the file, the line, the field, the reason."""


def _fraction(value: Any) -> Any:
    """``60%`` or ``0.6`` as 0.6."""
    if isinstance(value, str):
        match = _PERCENT.match(value)
        if match is None:
            raise ValueError(f"expected a share like 60% or 0.6, got {value!r}")
        return float(match[1]) / 100
    return value


class Firmware(BaseModel):
    model_config = _CONFIG

    version: str = Field(min_length=1)
    size_kib: int = Field(ge=1, le=16 * 1024)


class _Window(BaseModel):
    model_config = _CONFIG

    start: float = Field(alias="from", ge=0)
    end: float = Field(alias="to", gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> _Window:
        if self.end <= self.start:
            raise ValueError(f"'to' ({self.end:g}) must come after 'from' ({self.start:g})")
        return self


class BrokerOutage(_Window):
    """The gateway cannot reach the broker: its connection drops, reconnects fail."""

    broker: Literal["down"]

    def describe(self) -> str:
        return f"the broker is down from {self.start:g} s to {self.end:g} s"


#: How a link fault's direction reads in words (and in the scenario step).
LINK_DIRECTIONS = {"up": " from the gateway", "down": " to the gateway", "both": ""}


class LinkFault(_Window):
    """MQTT messages on the gateway's link duplicated or reordered while the window lasts."""

    mqtt: Literal["duplicate", "reorder"]
    topic: str = Field(default="#", min_length=1)
    direction: Literal["up", "down", "both"] = "both"

    def describe(self) -> str:
        verb = "duplicated" if self.mqtt == "duplicate" else "reordered"
        way = LINK_DIRECTIONS[self.direction]
        return (
            f'MQTT messages{way} on "{self.topic}" are {verb} '
            f"from {self.start:g} s to {self.end:g} s"
        )


class DownloadFault(BaseModel):
    """The firmware download stalls (then goes on) or is cut at a share of the file."""

    model_config = _CONFIG

    download: Literal["stall", "cut"]
    at: float = Field(gt=0, lt=1)
    #: How long a stall lasts, in seconds of wall time (the download runs on the wall clock).
    seconds: float = Field(default=0.0, ge=0)
    #: How many downloads it hits.
    times: int = Field(default=1, ge=1)

    _at = field_validator("at", mode="before")(_fraction)

    @model_validator(mode="after")
    def _stall_has_seconds(self) -> DownloadFault:
        if self.download == "stall" and self.seconds <= 0:
            raise ValueError("a stall needs 'seconds', how long it lasts")
        return self

    def describe(self) -> str:
        at = f"{self.at:.0%}"
        if self.download == "stall":
            return f"the download stalls at {at} for {self.seconds:g} seconds"
        return f"the download is cut at {at}"


class NodeFault(FaultSpec):
    """Faults of the nodes ``node`` selects (an index, a range, a list)."""

    node: str

    @field_validator("node", mode="before")
    @classmethod
    def _node_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("node")
    @classmethod
    def _check_node(cls, value: str) -> str:
        parse_selector(value)
        return value

    def faults(self) -> FaultSpec:
        return FaultSpec(**{k: getattr(self, k) for k in self.model_fields_set if k != "node"})


_ITEM_MODELS: dict[str, type[BaseModel]] = {
    "broker": BrokerOutage,
    "mqtt": LinkFault,
    "download": DownloadFault,
    "node": NodeFault,
}


#: What an item of no known kind is told (pydantic's ``union_tag_invalid`` for it).
UNKNOWN_ITEM = "a schedule item starts with one of " + ", ".join(f"{k}:" for k in _ITEM_MODELS)


def _schedule_kind(value: Any) -> str:
    """The kind of a schedule item: its model's, or the first kind key it holds. Any other
    item is ``unknown``, which pydantic reports as that item's error among the others."""
    for key, model in _ITEM_MODELS.items():
        if isinstance(value, model):
            return key
    if isinstance(value, Mapping):
        for key in _ITEM_MODELS:
            if key in value:
                return key
    return "unknown"


ScheduleItem = Annotated[
    Annotated[BrokerOutage, Tag("broker")]
    | Annotated[LinkFault, Tag("mqtt")]
    | Annotated[DownloadFault, Tag("download")]
    | Annotated[NodeFault, Tag("node")],
    Discriminator(_schedule_kind),
]


class Observed(BaseModel):
    """A node's outcome as the field saw it."""

    model_config = _CONFIG

    state: Literal["success", "failed", "canceled", "processing", "waiting"]
    reason: str | None = None
    version: str | None = None
    #: What the node went through, one line per message ("+31.200 s 63%").
    timeline: list[str] = Field(default_factory=list)


class FieldSpec(BaseModel):
    """A field incident to reproduce."""

    model_config = _CONFIG

    name: str = Field(min_length=1)
    seed: int = Field(default=0, ge=0)
    firmware: Firmware
    fleet: FleetSpec
    schedule: list[ScheduleItem] = Field(default_factory=list)
    #: Per node id, what the field saw (from an imported transcript or written by hand).
    observed: dict[str, Observed] = Field(default_factory=dict)
    #: Free notes: where the description comes from, what is not known.
    notes: str | None = None

    @field_validator("fleet", mode="before")
    @classmethod
    def _fleet_of_dict(cls, value: Any) -> Any:
        return FleetSpec.from_dict(value, "fleet") if isinstance(value, Mapping) else value

    # -- what the run needs ----------------------------------------------------------------

    def fleet_spec(self) -> FleetSpec:
        """The fleet with the schedule's node faults as overrides, under the field's seed."""
        extra = [
            NodeOverride(nodes=item.node, faults=item.faults())
            for item in self.schedule
            if isinstance(item, NodeFault)
        ]
        # A copy, not a re-validation: the overrides keep which fault fields they set, and
        # fault overrides merge field by field on exactly those.
        return self.fleet.model_copy(
            update={"seed": self.seed, "overrides": [*self.fleet.overrides, *extra]}
        )

    @model_validator(mode="after")
    def _nodes_exist(self) -> FieldSpec:
        for index, item in enumerate(self.schedule):
            if isinstance(item, NodeFault):
                try:
                    NodeOverride(nodes=item.node, faults=item.faults()).indices(self.fleet.nodes)
                except ValueError as exc:
                    raise _ItemError(index, str(exc), "node") from None
        return self

    @property
    def system_faults(self) -> list[BrokerOutage | LinkFault | DownloadFault]:
        return [i for i in self.schedule if not isinstance(i, NodeFault)]

    @property
    def needs_link_proxy(self) -> bool:
        return any(isinstance(i, BrokerOutage | LinkFault) for i in self.schedule)

    def to_dict(self) -> dict[str, Any]:
        """The field file's data; each schedule item leads with its kind, as written."""
        data = self.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        data["firmware"] = self.firmware.model_dump(mode="json")
        data["fleet"] = fleet_data(self.fleet)
        items = []
        for item in self.schedule:
            kind = _schedule_kind(item)
            dumped = item.model_dump(mode="json", by_alias=True, exclude_defaults=True)
            items.append({kind: dumped.pop(kind, getattr(item, kind)), **dumped})
        if items:
            data["schedule"] = items
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def fleet_data(fleet: FleetSpec, **update: Any) -> dict[str, Any]:
    """A fleet (with ``update`` applied) as a fleet file writes it: radio first; defaults,
    and a kind that is the radio's own, left out."""
    spec = fleet.model_copy(update=update) if update else fleet
    data = spec.model_dump(mode="json", exclude_defaults=True)
    if spec.kind == spec.radio:
        data.pop("kind", None)
    return {"radio": spec.radio, **data}


class _ItemError(ValueError):
    """A problem with schedule item ``index`` (at its field ``sub``, if given)."""

    def __init__(self, index: int, message: str, *sub: str) -> None:
        super().__init__(message)
        self.index = index
        self.sub = sub


def field_from_dict(data: Any, source: str = "<field>") -> FieldSpec:
    """Validate ``data``; errors as :class:`FieldFileError` naming ``source``."""
    if not isinstance(data, Mapping):
        got = "nothing" if data is None else type(data).__name__
        raise FieldFileError(source, [(None, None, f"expected a mapping of fields, got {got}")])
    try:
        return FieldSpec.model_validate(data)
    except FleetFileError as exc:
        # The fleet's own errors, re-rooted under "fleet".
        problems = [(f"fleet.{f}" if f else "fleet", None, r) for f, _, r in exc.problems]
        raise FieldFileError(source, problems) from None
    except ValidationError as exc:
        raise FieldFileError(source, _problems(exc)) from None


def load_field(path: str | Path) -> FieldSpec:
    """Read and validate a field file; every problem is a :class:`FieldFileError`."""
    source = str(path)
    text, data = read_yaml(path, lambda problems: FieldFileError(source, problems))
    try:
        return field_from_dict(data, source)
    except FieldFileError as exc:
        raise FieldFileError(source, with_lines(text, exc.problems)) from None


#: pydantic's errors for a schedule item of no kind it knows.
_NO_KIND = ("union_tag_invalid", "union_tag_not_found")


def _problems(exc: ValidationError) -> list[tuple[str | None, int | None, str]]:
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, FleetFileError):
            problems += [(f"fleet.{f}" if f else "fleet", None, r) for f, _, r in cause.problems]
            continue
        if isinstance(cause, _ItemError):
            loc = ("schedule", cause.index, *cause.sub)
            reason = str(cause)
        elif loc[:1] == ("schedule",) and error["type"] in _NO_KIND:
            reason = UNKNOWN_ITEM
        elif loc[:1] == ("schedule",) and len(loc) >= 3 and isinstance(loc[2], str):
            # The item's kind (the discriminator's tag) is no field of the file.
            loc = (loc[0], loc[1], *loc[3:])
            reason = pydantic_reason(error, _ITEM_MODELS.get(str(error["loc"][2]), FieldSpec))
        else:
            reason = pydantic_reason(error, FieldSpec)
        problems.append((field_path(loc) or None, None, reason))
    return _dedupe(problems)


def _dedupe(
    problems: list[tuple[str | None, int | None, str]],
) -> list[tuple[str | None, int | None, str]]:
    return list(dict.fromkeys(problems))

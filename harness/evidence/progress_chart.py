"""Upgrade progress over time as a hand-written SVG, so a report needs no plotting library.

Up to 24 devices get a line each. A fleet beyond that would be a hairball, so it is drawn as
the min/median/max band of the devices' latest progress, with the failed devices on top:
those are what the reader is looking for.
"""

from __future__ import annotations

import colorsys
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

import numpy as np

from .events import Event, number

WIDTH, HEIGHT = 900, 420
MAX_LINES = 24
_LEFT, _RIGHT, _TOP, _BOTTOM = 60, 210, 40, 50
_PLOT_W, _PLOT_H = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
_RED = "#d62728"
_ROW = 13  # legend line height
_BAND_SAMPLES = _PLOT_W  # one step sample per pixel column
_PROGRESS_SUFFIX = "/firmware/upgrade/progress"
_COMMAND_SUFFIX = "/firmware/upgrade"
WALL_LABEL = "seconds since the upgrade command"
RADIO_LABEL = "seconds of radio time (simulated)"
_XML_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclass
class _Device:
    times: list[float] = field(default_factory=list)
    progress: list[float] = field(default_factory=list)
    failed: bool = False


def _text(value: object) -> str:
    return escape(_XML_BAD.sub("?", str(value)), {'"': "&quot;"})


def _device_from_topic(topic: str) -> str:
    parts = topic.strip("/").split("/")
    if len(parts) > 3 and parts[2] == "child":
        return parts[3]
    return parts[1] if len(parts) > 1 else topic


def _radio_clock(events: Sequence[Event]) -> tuple[np.ndarray, np.ndarray] | None:
    """(wall, radio time) of every radio frame, in wall order: a report's radio time is that
    of the last frame before it (the simulator hands progress over within 50 ms)."""
    pairs = [
        (w, v)
        for e in events
        if e.get("ev") == "frame"
        and (w := number(e.get("wall"))) is not None
        and (v := number(e.get("vt"))) is not None
    ]
    if not pairs:
        return None
    walls, radio = np.array(sorted(pairs)).T
    return walls, radio


def _collect(
    events: Sequence[Event], radio: bool = False
) -> tuple[dict[str, _Device], float | None]:
    """Progress per device, and the time the chart counts from: wall time since the
    upgrade command, or (``radio``) radio time since the first frame."""
    clock = _radio_clock(events) if radio else None
    if radio and clock is None:
        return {}, None
    devices: dict[str, _Device] = {}
    command_at: float | None = None
    first_progress: float | None = None
    states: dict[str, str] = {}
    for event in events:
        kind = event.get("ev")
        if kind == "outcome":
            records = event.get("records")
            if isinstance(records, Mapping):
                states = {
                    str(k): str(v.get("state"))
                    for k, v in records.items()
                    if isinstance(v, Mapping)
                }
            continue
        if kind != "mqtt":
            continue
        topic, wall = str(event.get("topic", "")), number(event.get("wall"))
        if wall is None:
            continue
        if event.get("dir") == "down" and topic.endswith(_COMMAND_SUFFIX):
            command_at = wall if command_at is None else command_at
            continue
        payload = event.get("payload")
        if event.get("dir") != "up" or not topic.endswith(_PROGRESS_SUFFIX):
            continue
        progress = number(payload.get("progress")) if isinstance(payload, Mapping) else None
        if progress is None:
            continue
        name = payload.get("deviceId") or _device_from_topic(topic)
        device = devices.setdefault(str(name), _Device())
        if clock is not None:
            walls, vts = clock
            wall = float(vts[max(0, int(np.searchsorted(walls, wall, side="right")) - 1)])
        device.times.append(wall)
        device.progress.append(min(100.0, max(0.0, progress)))
        # The last report decides, so a retry that succeeds clears an earlier failure.
        device.failed = bool(payload.get("complete")) and payload.get("success") is False
        first_progress = wall if first_progress is None else first_progress
    for name, device in devices.items():
        if name in states:
            device.failed = states[name] == "failed"
    if clock is not None:
        return devices, float(clock[1].min())
    return devices, command_at if command_at is not None else first_progress


def _nice_step(span: float, target: int) -> float:
    raw = span / max(1, target)
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def _palette(n: int) -> list[str]:
    """``n`` distinct colours that stay clear of the red reserved for failures."""
    colours = []
    for i in range(n):
        hue = (0.08 + 0.84 * i / max(1, n)) % 1.0
        lightness = 0.38 if i % 2 else 0.5
        r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.75)
        colours.append(f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}")
    return colours


class _Axes:
    """Maps data (seconds, percent) to SVG coordinates and draws the axes."""

    def __init__(self, t0: float, t1: float, label: str = WALL_LABEL) -> None:
        self.t0, self.t1 = t0, (t1 if t1 - t0 > 1e-9 else t0 + 1.0)
        self.label = label

    def x(self, t: float) -> float:
        return round(_LEFT + (t - self.t0) / (self.t1 - self.t0) * _PLOT_W, 1)

    @staticmethod
    def y(p: float) -> float:
        return round(_TOP + (1 - p / 100) * _PLOT_H, 1)

    def frame(self) -> list[str]:
        out = [
            f'<rect class="plot" x="{_LEFT}" y="{_TOP}" width="{_PLOT_W}" height="{_PLOT_H}" '
            'fill="none" stroke="#888"/>'
        ]
        for p in range(0, 101, 20):
            y = self.y(p)
            out.append(
                f'<line x1="{_LEFT}" y1="{y}" x2="{_LEFT + _PLOT_W}" y2="{y}" stroke="#eee"/>'
                f'<text class="tick" x="{_LEFT - 6}" y="{y + 4}" text-anchor="end">{p}</text>'
            )
        step = _nice_step(self.t1 - self.t0, 8)
        first = math.ceil(self.t0 / step - 1e-9)
        for i in range(first, math.floor(self.t1 / step + 1e-9) + 1):
            tick = i * step
            x, label = self.x(tick), f"{tick:g}"
            out.append(
                f'<line x1="{x}" y1="{_TOP + _PLOT_H}" x2="{x}" y2="{_TOP + _PLOT_H + 5}" '
                f'stroke="#888"/><text class="tick" x="{x}" y="{_TOP + _PLOT_H + 18}" '
                f'text-anchor="middle">{label}</text>'
            )
        out.append(
            f'<text class="axis-title" x="{_LEFT + _PLOT_W / 2}" y="{HEIGHT - 10}" '
            f'text-anchor="middle">{_text(self.label)}</text>'
            f'<text class="axis-title" x="16" y="{_TOP + _PLOT_H / 2}" text-anchor="middle" '
            f'transform="rotate(-90 16 {_TOP + _PLOT_H / 2})">progress (%)</text>'
        )
        return out

    def polyline(
        self, times: Sequence[float], values: Sequence[float], attrs: str, tooltip: str = ""
    ) -> str:
        points = [(self.x(t), self.y(v)) for t, v in zip(times, values, strict=True)]
        if len(points) == 1:  # a single report still shows, as a dot with round caps
            points.append(points[0])
        coords = " ".join(f"{x},{y}" for x, y in points)
        start = f'<polyline points="{coords}" fill="none" {attrs}'
        return f"{start}><title>{_text(tooltip)}</title></polyline>" if tooltip else start + "/>"


def _steps(times: list[float], values: list[float]) -> tuple[list[float], list[float]]:
    """A device's progress holds until its next report: draw it as a step function."""
    xs, ys = [times[0]], [values[0]]
    for t, v in zip(times[1:], values[1:], strict=True):
        xs += [t, t]
        ys += [ys[-1], v]
    return xs, ys


def _legend_entry(row: int, colour: str, label: str, marker: bool, dash: str = "") -> str:
    x, y = WIDTH - _RIGHT + 15, _TOP + 6 + row * _ROW
    out = (
        f'<line x1="{x}" y1="{y}" x2="{x + 18}" y2="{y}" stroke="{colour}" stroke-width="2"{dash}/>'
    )
    if marker:
        out += f'<circle cx="{x + 9}" cy="{y}" r="3" fill="{colour}"/>'
    return out + f'<text x="{x + 24}" y="{y + 4}">{_text(label)}</text>'


def _svg(title: str, body: list[str]) -> str:
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
            '<rect width="100%" height="100%" fill="white"/>',
            f'<text class="title" x="{WIDTH / 2}" y="22" text-anchor="middle" '
            f'font-size="14">{_text(title)}</text>',
            *body,
            "</svg>",
            "",
        ]
    )


def _lines(devices: dict[str, _Device], axes: _Axes, t0: float) -> list[str]:
    names = sorted(devices)
    healthy = [n for n in names if not devices[n].failed]
    colours = dict(zip(healthy, _palette(len(healthy)), strict=True))
    body, legend = ['<g class="series" stroke-width="1.5" stroke-linecap="round">'], []
    for row, name in enumerate(names):
        device = devices[name]
        times = [t - t0 for t in device.times]
        xs, ys = _steps(times, device.progress)
        colour = _RED if device.failed else colours[name]
        cls = "failed" if device.failed else "device"
        body.append(axes.polyline(xs, ys, f'class="{cls}" stroke="{colour}"', name))
        if device.failed:
            body.append(
                f'<circle class="failed-marker" cx="{axes.x(xs[-1])}" cy="{axes.y(ys[-1])}" '
                f'r="4" fill="{_RED}"/>'
            )
        label = f"{name} (failed)" if device.failed else name
        legend.append(_legend_entry(row, colour, label, device.failed))
    body.append("</g>")
    return [*body, '<g class="legend">', *legend, "</g>"]


def _band(devices: dict[str, _Device], axes: _Axes, t0: float) -> list[str]:
    names = sorted(devices)
    index = np.repeat(np.arange(len(names)), [len(devices[n].times) for n in names])
    times = np.concatenate([np.asarray(devices[n].times) for n in names]) - t0
    values = np.concatenate([np.asarray(devices[n].progress) for n in names])
    samples = np.linspace(axes.t0, axes.t1, _BAND_SAMPLES)
    # Each report holds from the first sample at or after it; per (device, sample) keep the
    # latest report, then carry it forward. Before a device's first report it counts as 0 %.
    order = np.argsort(times, kind="stable")
    column = np.minimum(np.searchsorted(samples, times[order]), samples.size - 1)
    cell = index[order] * samples.size + column
    # Fancy assignment does not promise which duplicate wins, so pick the last one per cell.
    cells, last = np.unique(cell[::-1], return_index=True)
    latest = np.full(len(names) * samples.size, np.nan)
    latest[cells] = values[order][::-1][last]
    latest = latest.reshape(len(names), samples.size)
    filled = np.where(np.isnan(latest), 0, np.arange(samples.size))
    filled = np.maximum.accumulate(filled, axis=1)
    held = np.nan_to_num(np.take_along_axis(latest, filled, axis=1), nan=0.0)
    low, mid, high = np.min(held, 0), np.median(held, 0), np.max(held, 0)

    upper = " ".join(f"{axes.x(t)},{axes.y(v)}" for t, v in zip(samples, high, strict=True))
    lower = " ".join(
        f"{axes.x(t)},{axes.y(v)}" for t, v in zip(samples[::-1], low[::-1], strict=True)
    )
    body = [
        f'<polygon class="band" points="{upper} {lower}" fill="#9ecae1" fill-opacity="0.6" '
        'stroke="#6baed6" stroke-width="0.5"/>',
        axes.polyline(samples, mid, 'class="median" stroke="#08519c" stroke-width="2"'),
    ]
    failed = [n for n in names if devices[n].failed]
    legend = [
        f'<rect x="{WIDTH - _RIGHT + 15}" y="{_TOP + 1}" width="18" height="10" '
        'fill="#9ecae1" stroke="#6baed6"/>'
        f'<text x="{WIDTH - _RIGHT + 39}" y="{_TOP + 10}">min .. max</text>',
        _legend_entry(1, "#08519c", "median", False),
    ]
    for row, name in enumerate(failed[:MAX_LINES], start=2):
        device = devices[name]
        xs, ys = _steps([t - t0 for t in device.times], device.progress)
        body.append(
            axes.polyline(xs, ys, f'class="failed" stroke="{_RED}" stroke-width="1.5"', name)
        )
        body.append(
            f'<circle class="failed-marker" cx="{axes.x(xs[-1])}" cy="{axes.y(ys[-1])}" '
            f'r="3" fill="{_RED}"/>'
        )
        legend.append(_legend_entry(row, _RED, f"{name} (failed)", True))
    if len(failed) > MAX_LINES:
        y = _TOP + 10 + (MAX_LINES + 2) * _ROW
        legend.append(
            f'<text x="{WIDTH - _RIGHT + 15}" y="{y}">'
            f"+{len(failed) - MAX_LINES} more failed, not drawn</text>"
        )
    return [*body, '<g class="legend">', *legend, "</g>"]


def progress_chart_svg(events: Sequence[Event], radio: bool = False) -> str:
    """SVG of each device's reported progress over the wall time since the upgrade command,
    or (``radio``) over the simulated radio's time, where a fleet's transfer takes minutes
    though it ran in a second of wall time."""
    devices, t0 = _collect(events, radio)
    if not devices or t0 is None:
        return _svg(
            "Firmware upgrade progress",
            [
                f'<text class="empty" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" '
                'font-size="16" fill="#666">no progress reported</text>'
            ],
        )
    all_times = [t - t0 for d in devices.values() for t in d.times]
    axes = _Axes(min(0.0, *all_times), max(all_times), RADIO_LABEL if radio else WALL_LABEL)
    failed = sum(d.failed for d in devices.values())
    count = f"{len(devices)} device{'s' if len(devices) != 1 else ''}"
    if len(devices) <= MAX_LINES:
        title = f"Firmware upgrade progress: {count}, {failed} failed"
        series = _lines(devices, axes, t0)
    else:
        title = f"Firmware upgrade progress: {count} (min/median/max), {failed} failed"
        series = _band(devices, axes, t0)
    return _svg(title, [*axes.frame(), *series])

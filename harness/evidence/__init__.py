"""Evidence for a test report, rendered from a scenario trace (``ota-hil-trace/1`` events).

Pure functions: they take the parsed events and return text, SVG or PNG bytes; writing
them anywhere is the caller's business.
"""

from __future__ import annotations

from harness.evidence.png import encode_png
from harness.evidence.progress_chart import progress_chart_svg
from harness.evidence.reception import Reception, block_reception, cell_size, reception_png
from harness.evidence.transcript import frame_excerpt, mqtt_transcript

__all__ = [
    "Reception",
    "block_reception",
    "cell_size",
    "encode_png",
    "frame_excerpt",
    "mqtt_transcript",
    "progress_chart_svg",
    "reception_png",
]

"""Constants shared by every part of partslib."""

from __future__ import annotations

__all__ = ["IGNORE_INDEX"]

#: Label of unannotated pixels in part masks: ignored by the PDM's loss, left out of every IoU,
#: never removed by a removal operator. Part ids are ``0`` (background) to ``P``.
IGNORE_INDEX = 255

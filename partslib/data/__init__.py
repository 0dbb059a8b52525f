"""Datasets: the SynthParts generator and real-data loaders."""

from partslib.data.synthparts import ReRender, SynthParts, SynthPartsConfig

__all__ = ["ReRender", "SynthParts", "SynthPartsConfig"]

"""Quantitative part explanations: how much each segmented part contributed to a class score.

* :mod:`partslib.explain.core` -- :class:`PartExplainer`, the template every method runs
  through (one classifier and segmenter pass per batch), the segmenters, the region formula.
* :mod:`partslib.explain.rules` -- the contribution rules (region, occlusion, IBD basis,
  heatmap mass, random).
* :mod:`partslib.explain.registry` -- the method table (:data:`REGISTRY`) read by the studies,
  the explorer and the benchmark.
"""

from partslib.explain.core import (
    MODES,
    ExplainContext,
    FinalFeatures,
    FixedMapsSegmenter,
    IBDLinearSegmenter,
    PartExplainer,
    PDMSegmenter,
    Segmenter,
    as_segmenter,
    explain,
    fused_features,
    region_contributions,
    resolve_targets,
    runner_up,
    segment_parts,
)
from partslib.explain.explanation import (
    PartExplanation,
    paint,
    part_areas,
    part_class_table,
)
from partslib.explain.registry import (
    METHODS,
    REGISTRY,
    Method,
    explain_methods,
    get_method,
)
from partslib.explain.rules import (
    HeatmapMassRule,
    IBDBasisRule,
    OcclusionRule,
    RandomRule,
    RegionRule,
    Rule,
    RuleResult,
)

__all__ = [
    "METHODS",
    "MODES",
    "REGISTRY",
    "ExplainContext",
    "FinalFeatures",
    "FixedMapsSegmenter",
    "HeatmapMassRule",
    "IBDBasisRule",
    "IBDLinearSegmenter",
    "Method",
    "OcclusionRule",
    "PDMSegmenter",
    "PartExplainer",
    "PartExplanation",
    "RandomRule",
    "RegionRule",
    "Rule",
    "RuleResult",
    "Segmenter",
    "as_segmenter",
    "explain",
    "explain_methods",
    "fused_features",
    "get_method",
    "paint",
    "part_areas",
    "part_class_table",
    "region_contributions",
    "resolve_targets",
    "runner_up",
    "segment_parts",
]

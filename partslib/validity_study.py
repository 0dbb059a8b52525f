"""Table T2, re-exported from :mod:`partslib.studies` (the study's notebooks import it from here
until they import :mod:`partslib.studies.validity` and its siblings directly)."""

from partslib.explain.registry import METHODS
from partslib.studies.removal_cache import (
    FinalFeatures,
    RemovalCache,
    fused_features,
    region_gap,
)
from partslib.studies.validity import (
    CONTRASTIVE,
    NEEDS_IBD,
    NOTES,
    OPERATORS,
    SANITY_METHODS,
    ValidityExtras,
    default_operators,
    run_validity,
    sanity_module_names,
)
from partslib.studies.validity_plots import (
    plot_claimed_vs_measured,
    plot_deletion_curves,
    plot_sanity,
)
from partslib.studies.validity_text import (
    ablation_table,
    gap_summary,
    headline,
    metrics_dict,
    reading,
)

__all__ = ["METHODS", "OPERATORS", "CONTRASTIVE", "NEEDS_IBD", "NOTES", "SANITY_METHODS",
           "RemovalCache", "FinalFeatures", "fused_features", "region_gap", "ValidityExtras",
           "default_operators", "sanity_module_names", "run_validity", "headline",
           "metrics_dict", "ablation_table", "reading", "gap_summary",
           "plot_claimed_vs_measured", "plot_deletion_curves", "plot_sanity"]

"""partslib: explain CNN classifiers through accurately segmented semantic parts.

The public API, importable from ``partslib`` directly::

    from partslib import PartExplainer, PartsDetectionModule, SmallResNet, train_pdm

    explainer = PartExplainer(classifier, pdm, part_names, head=head)  # amortised rule
    e = explainer(images)                                         # a PartExplanation
    e = explainer(images, mode="region")                          # the paper's rule
    e = explainer(images, rule=OcclusionRule(GaussianBlurFill()))
    e.to_dataframe(class_names)

* explanations: :class:`PartExplainer`, :class:`PartExplanation`, :func:`part_class_table`;
  the contribution rules (:class:`AmortisedRule` with its :class:`ContributionHead`,
  :func:`train_head`, :func:`load_head`; :class:`ShapleyRule` and :func:`part_shapley`;
  :class:`RegionRule`, :class:`OcclusionRule`, :class:`IBDBasisRule`,
  :class:`HeatmapMassRule`, :class:`RandomRule`) and the method table (:data:`REGISTRY`,
  :func:`get_method`, :func:`explain_methods`);
* the PDM: :class:`PartsDetectionModule`, :func:`train_pdm`, :func:`load_pdm`, :func:`segment`;
* classifiers with the feature contract: :class:`ContractClassifier`, :class:`SmallResNet`,
  :class:`TorchvisionResNet`, :func:`create_classifier`, :func:`build_classifier`;
* training: :func:`fit`, the stage configs :class:`ClassifierConfig`, :class:`PDMConfig`,
  :class:`DataConfig` (their defaults are the default study's), and the stage pipeline
  :mod:`partslib.pipeline` (train / load a classifier and a PDM on any data);
* removal operators: :class:`MeanFill`, :class:`GaussianBlurFill`, :class:`BackgroundFill`,
  :class:`NoisyLinearImputer`, the :class:`RemovalOperator` protocol;
* baselines: :func:`fit_ibd` / :class:`IBDModel` (IBD as its reference code does it) and
  :func:`gradcam_maps` (pytorch-grad-cam);
* data: :class:`SynthParts` (generated, with exact re-rendering) and :class:`FolderDataset`
  (your own photos and part masks, ``docs/data_format.md``).

Names are imported on first use, so ``import partslib`` stays cheap and loads no torch (the
benchmark sets OpenMP's wait policy before torch starts).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("PartExplainer", "MODES"), "partslib.explain.core"),
    **dict.fromkeys(("PartExplanation", "part_class_table"), "partslib.explain.explanation"),
    **dict.fromkeys(("HeatmapMassRule", "IBDBasisRule", "OcclusionRule", "RandomRule",
                     "RegionRule", "Rule"), "partslib.explain.rules"),
    **dict.fromkeys(("AmortisedRule", "ContributionHead"), "partslib.explain.amortised"),
    **dict.fromkeys(("train_head", "load_head"), "partslib.explain.amortised_training"),
    **dict.fromkeys(("ShapleyRule", "ShapleyValues", "part_shapley"),
                    "partslib.explain.shapley"),
    **dict.fromkeys(("METHODS", "REGISTRY", "Method", "explain_methods", "get_method"),
                    "partslib.explain.registry"),
    **dict.fromkeys(("PartsDetectionModule", "load_pdm", "segment", "train_pdm"),
                    "partslib.pdm"),
    **dict.fromkeys(("ContractClassifier", "SmallResNet", "TorchvisionResNet",
                     "build_classifier", "create_classifier"), "partslib.models"),
    **dict.fromkeys(("fit", "load_checkpoint", "evaluate_classifier"), "partslib.training"),
    **dict.fromkeys(("ClassifierConfig", "DataConfig", "HeadConfig", "PDMConfig"),
                    "partslib.config"),
    **dict.fromkeys(("BackgroundFill", "GaussianBlurFill", "MeanFill", "NoisyLinearImputer",
                     "RemovalOperator"), "partslib.removal"),
    **dict.fromkeys(("IBDModel", "fit_ibd", "gradcam_maps"), "partslib.baselines"),
    "SynthParts": "partslib.data.synthparts",
    "FolderDataset": "partslib.data.folder",
}

__all__ = [  # the names of _EXPORTS, written out for tools that read __all__
    "METHODS",
    "MODES",
    "REGISTRY",
    "AmortisedRule",
    "BackgroundFill",
    "ClassifierConfig",
    "ContractClassifier",
    "ContributionHead",
    "DataConfig",
    "FolderDataset",
    "GaussianBlurFill",
    "HeadConfig",
    "HeatmapMassRule",
    "IBDBasisRule",
    "IBDModel",
    "MeanFill",
    "Method",
    "NoisyLinearImputer",
    "OcclusionRule",
    "PDMConfig",
    "PartExplainer",
    "PartExplanation",
    "PartsDetectionModule",
    "RandomRule",
    "RegionRule",
    "RemovalOperator",
    "Rule",
    "ShapleyRule",
    "ShapleyValues",
    "SmallResNet",
    "SynthParts",
    "TorchvisionResNet",
    "build_classifier",
    "create_classifier",
    "evaluate_classifier",
    "explain_methods",
    "fit",
    "fit_ibd",
    "get_method",
    "gradcam_maps",
    "load_checkpoint",
    "load_head",
    "load_pdm",
    "part_class_table",
    "part_shapley",
    "segment",
    "train_head",
    "train_pdm",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'partslib' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what type checkers and IDEs see; the same names as _EXPORTS
    from partslib.baselines import IBDModel, fit_ibd, gradcam_maps
    from partslib.config import ClassifierConfig, DataConfig, HeadConfig, PDMConfig
    from partslib.data.folder import FolderDataset
    from partslib.data.synthparts import SynthParts
    from partslib.explain.amortised import AmortisedRule, ContributionHead
    from partslib.explain.amortised_training import load_head, train_head
    from partslib.explain.core import MODES, PartExplainer
    from partslib.explain.explanation import PartExplanation, part_class_table
    from partslib.explain.registry import METHODS, REGISTRY, Method, explain_methods, get_method
    from partslib.explain.rules import (
        HeatmapMassRule,
        IBDBasisRule,
        OcclusionRule,
        RandomRule,
        RegionRule,
        Rule,
    )
    from partslib.explain.shapley import ShapleyRule, ShapleyValues, part_shapley
    from partslib.models import (
        ContractClassifier,
        SmallResNet,
        TorchvisionResNet,
        build_classifier,
        create_classifier,
    )
    from partslib.pdm import PartsDetectionModule, load_pdm, segment, train_pdm
    from partslib.removal import (
        BackgroundFill,
        GaussianBlurFill,
        MeanFill,
        NoisyLinearImputer,
        RemovalOperator,
    )
    from partslib.training import evaluate_classifier, fit, load_checkpoint

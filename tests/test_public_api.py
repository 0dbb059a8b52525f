"""The public surface: every name of ``partslib.__all__`` resolves to the object of its module,
and ``import partslib`` loads no torch (the benchmark sets OpenMP's wait policy first)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import partslib


def test_all_lists_the_exports():
    assert sorted(partslib.__all__) == sorted(partslib._EXPORTS)


@pytest.mark.parametrize("name", partslib.__all__)
def test_public_name_resolves_to_its_module(name):
    module = importlib.import_module(partslib._EXPORTS[name])
    assert getattr(partslib, name) is getattr(module, name)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'PartExplaner'"):
        partslib.PartExplaner  # noqa: B018 - the lookup is the test


def test_import_is_light():
    code = "import sys, partslib; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"


def test_the_docstring_example_runs():
    """The usage shown in ``partslib.__doc__``, on a small random model."""
    import torch

    from partslib import (
        GaussianBlurFill,
        OcclusionRule,
        PartExplainer,
        PartsDetectionModule,
        SmallResNet,
    )

    torch.manual_seed(0)
    classifier = SmallResNet(num_classes=3, widths=(8, 16, 32), input_size=32).eval()
    pdm = PartsDetectionModule.for_classifier(classifier, 4, widths=[8, 8]).eval()
    explainer = PartExplainer(classifier, pdm, ["background", "a", "b", "c"])
    images = torch.rand(2, 3, 32, 32)
    e = explainer(images)
    assert e.contributions.shape == (2, 4)
    assert float(e.completeness_error().max()) < 1e-4
    e = explainer(images, rule=OcclusionRule(GaussianBlurFill()))
    assert e.contributions.shape == (2, 4)
    assert len(e.to_dataframe(["x", "y", "z"])) == 8

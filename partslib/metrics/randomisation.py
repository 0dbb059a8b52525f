"""Randomisation checks of part explanations (SPEC §5 V5) and the chance floor.

* V5 :func:`cascading_randomisation` -- the model-parameter randomisation test of Adebayo et
  al., NeurIPS 2018 (https://arxiv.org/abs/1810.03292), cascading from the head downwards.
* :class:`RandomExplainer` -- random contributions, the floor every explanation must beat.

Both are re-exported by :mod:`partslib.metrics.validity` and :mod:`partslib.metrics`.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from partslib.metrics._checks import _check_parts, _check_present, _check_targets, spearman

__all__ = ["SANITY_COLUMNS", "ExplainFn", "RandomExplainer", "cascading_randomisation"]

SANITY_COLUMNS = ("step", "module", "spearman_contrib", "spearman_maps", "spearman_contrib_abs",
                  "spearman_maps_abs")

ExplainFn = Callable[[nn.Module, torch.Tensor, torch.Tensor],
                     tuple[torch.Tensor, "torch.Tensor | None"]]


# ------------------------------------------------------------------------ V5 randomise

def _reinitialise(module: nn.Module) -> list[str]:
    """Re-initialise ``module`` and all its descendants in place; return names left as is."""
    covered: set[int] = set()
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            m.reset_parameters()  # running stats to (0, 1) and affine to (1, 0): stays finite
        elif callable(reset := getattr(m, "reset_parameters", None)):
            reset()
        elif callable(reset := getattr(m, "_reset_parameters", None)):  # nn.MultiheadAttention
            reset()
        else:
            continue
        covered.update(id(p) for p in m.parameters(recurse=False))
    return [n for n, p in module.named_parameters() if id(p) not in covered]


def _nanmean(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else math.nan


def _to_cpu(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.detach().double().cpu()


def _check_module_names(model: nn.Module, module_names: Sequence[str]) -> list[str]:
    names = list(module_names)
    if not names:
        raise ValueError("module_names_top_down must name at least one module")
    for name in names:
        try:
            model.get_submodule(name)
        except AttributeError as e:
            raise ValueError(f"model has no submodule {name!r}") from e
    return names


def cascading_randomisation(model: nn.Module, module_names_top_down: Sequence[str],
                            explain_fn: ExplainFn, images: torch.Tensor,
                            targets: torch.Tensor, seed: int = 0,
                            present: torch.Tensor | None = None) -> pd.DataFrame:
    """V5: cascading model-parameter randomisation (Adebayo et al. 2018), head downwards.

    Deep-copies ``model`` (the input model is never touched), explains the trained copy, then
    re-initialises the named modules one after another -- each with ``reset_parameters()`` on
    it and all its descendants (BatchNorm: running stats and affine parameters reset) under
    ``torch.manual_seed`` derived from ``(seed, step)`` inside ``torch.random.fork_rng`` so the
    caller's RNG state is unchanged -- and explains again after every step, keeping earlier
    randomisations (cascade).

    Args:
        model: the trained classifier.
        module_names_top_down: names for ``model.get_submodule``, head first.
        explain_fn: ``(model, images, targets) -> (contributions (B,P+1), maps (B,...) or
            None)``.
        images: ``(B,3,H,W)``; targets ``(B,)``.
        present: optional ``(B,P+1)`` bool; if given, contributions are compared over
            present parts only (absent parts are usually exactly 0 and would inflate ties).
    Returns:
        DataFrame with columns ``step`` (0 = trained), ``module``, ``spearman_contrib``,
        ``spearman_maps`` -- per-image Spearman with the trained explanation, averaged over
        images ignoring NaN (``spearman_maps`` is NaN when ``explain_fn`` gives no maps) --
        and ``spearman_contrib_abs``, ``spearman_maps_abs``, the same of absolute values
        (Adebayo et al. report both: an explanation whose order survives with its sign
        flipped has a signed Spearman near -1 and an absolute one near +1).
        ``df.attrs`` records the seed and the module order.
    """
    names = _check_module_names(model, module_names_top_down)
    work = copy.deepcopy(model)
    B = images.shape[0]
    _check_targets(targets, B)
    if present is not None:
        _check_present(present, B)

    def explain() -> tuple[torch.Tensor, torch.Tensor | None]:
        out = explain_fn(work, images, targets)
        if not isinstance(out, tuple) or len(out) != 2:
            raise ValueError("explain_fn must return (contributions, maps or None)")
        c, m = out
        _check_parts("contributions", c, present)
        if c.shape[0] != B or (m is not None and m.shape[0] != B):
            raise ValueError(f"explain_fn must return one row per image ({B})")
        return _to_cpu(c), _to_cpu(m)  # type: ignore[return-value]

    def similarity(c: torch.Tensor, m: torch.Tensor | None) -> tuple[float, ...]:
        if (m is None) != (m_ref is None):
            raise ValueError("explain_fn returned maps on some calls and None on others")
        rc, rm, rca, rma = [], [], [], []
        for i in range(B):
            sel = slice(None) if present is None else present[i].cpu()
            rc.append(spearman(c_ref[i][sel], c[i][sel]))
            rca.append(spearman(c_ref[i][sel].abs(), c[i][sel].abs()))
            if m is not None:
                rm.append(spearman(m_ref[i], m[i]))  # type: ignore[index]
                rma.append(spearman(m_ref[i].abs(), m[i].abs()))  # type: ignore[index]
        return _nanmean(rc), _nanmean(rm), _nanmean(rca), _nanmean(rma)

    c_ref, m_ref = explain()
    rows = [(0, "(trained)", *similarity(c_ref, m_ref))]
    devices = sorted({p.device.index or 0 for p in work.parameters() if p.device.type == "cuda"})
    for step, name in enumerate(names, start=1):
        step_seed = int(np.random.SeedSequence([seed, step]).generate_state(1)[0])
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(step_seed)
            left = _reinitialise(work.get_submodule(name))
        if left:
            warnings.warn(f"cascading_randomisation: parameters of {name!r} without "
                          f"reset_parameters() were kept: {left}", RuntimeWarning, stacklevel=2)
        c, m = explain()
        if not (torch.isfinite(c).all() and (m is None or torch.isfinite(m).all())):
            warnings.warn(f"cascading_randomisation: non-finite explanation after "
                          f"re-initialising {name!r}", RuntimeWarning, stacklevel=2)
        rows.append((step, name, *similarity(c, m)))
    df = pd.DataFrame(rows, columns=list(SANITY_COLUMNS))
    df.attrs.update(seed=seed, modules=names, order="top_down", reinit="reset_parameters")
    return df


# ------------------------------------------------------------------------------- floor

class RandomExplainer:
    """Chance floor: standard-normal contributions for present parts, 0 for absent ones.

    Draws come from a private ``torch.Generator`` seeded once at construction, so a sequence
    of calls is reproducible from ``seed`` and the global RNG is untouched.

    Call: ``(images (B,3,H,W), targets (B,), present (B,P+1) bool) -> (B,P+1) float32``.
    """

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self._gen = torch.Generator().manual_seed(self.seed)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor,
                 present: torch.Tensor) -> torch.Tensor:
        _check_present(present, images.shape[0])
        c = torch.randn(tuple(present.shape), generator=self._gen)
        return torch.where(present.cpu(), c, 0.0).to(present.device)

    def __repr__(self) -> str:
        return f"RandomExplainer(seed={self.seed})"

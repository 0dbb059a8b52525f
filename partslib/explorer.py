"""An ipywidgets explorer for part explanations, built from core widgets only.

The rendering is a plain function, :func:`render`, that returns a matplotlib figure for one
state (image, target class, mode) and is tested without a browser; :func:`build_explorer` only
wires core ipywidgets (IntSlider, Dropdown, HBox/VBox, Output) to it, so it renders in
JupyterLab 4 without any custom front-end extension.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from partslib import viz
from partslib.explain import PartExplainer, PartExplanation
from partslib.explain.registry import REGISTRY, Models, get_method

if TYPE_CHECKING:
    import ipywidgets

__all__ = ["EXPLORER_MODES", "ExplorerState", "build_explorer", "default_mode", "explain_state",
           "explorer_modes", "render"]

# registry name -> display name: the methods on PDM parts in logit units (the explorer has the
# classifier, the PDM and, when its explainer was built with one, the contribution head)
EXPLORER_MODES: dict[str, str] = {
    n: m.display for n, m in REGISTRY.items()
    if set(m.needs) <= {"pdm", "head"} and m.units in ("logit", "margin")}


def _head(explainer: PartExplainer) -> Any:
    return getattr(explainer.rule, "head", None)


def explorer_modes(explainer: PartExplainer) -> dict[str, str]:
    """The modes this explainer can show (the amortised rule only with a head)."""
    return {n: d for n, d in EXPLORER_MODES.items()
            if "head" not in REGISTRY[n].needs or _head(explainer) is not None}


def default_mode(explainer: PartExplainer) -> str:
    """The explainer's own rule: ``pdm-amortised`` with a head, else ``pdm-region-soft``."""
    return "pdm-amortised" if _head(explainer) is not None else "pdm-region-soft"


@dataclass(frozen=True)
class ExplorerState:
    """What the explorer shows: one image, the class explained, the method and the part."""

    index: int = 0  # image index
    target: int | None = None  # class to explain; None = predicted
    mode: str | None = None  # a key of EXPLORER_MODES; None = the explainer's default rule
    part: int | None = None  # part whose probability map is shown; None = top contributor


def explain_state(explainer: PartExplainer, images: torch.Tensor, state: ExplorerState
                  ) -> PartExplanation:
    """The explanation of image ``state.index`` by the registry method ``state.mode`` (its rule
    and contrast), for ``state.target`` or the predicted class."""
    if not 0 <= state.index < len(images):
        raise ValueError(f"image index {state.index} out of range 0..{len(images) - 1}")
    mode = state.mode or default_mode(explainer)
    modes = explorer_modes(explainer)
    if mode not in modes:
        raise ValueError(f"mode must be one of {list(modes)}, got {mode!r}")
    x = images[state.index:state.index + 1]
    method = get_method(mode)
    return explainer(x, target=None if state.target is None else [state.target],
                     rule=method.rule(Models(explainer.classifier, head=_head(explainer))),
                     contrastive=method.contrastive)


def render(explainer: PartExplainer, images: torch.Tensor, state: ExplorerState,
           class_names: Sequence[str] | None = None,
           labels: Sequence[int] | torch.Tensor | None = None
           ) -> Figure:
    """Figure for one explorer state: image | parts | one part's probability map (``state.part``,
    else the top contributor) | contribution bars. ``labels`` (one true class per image) add
    the true and predicted class to the image's title."""
    e = explain_state(explainer, images, state)
    x = images[state.index:state.index + 1]
    part = state.part
    if part is None:  # the top contributor among present parts
        c = e.contributions[0].masked_fill(~e.present[0], float("-inf"))
        part = int(c.argmax())
    name = (lambda k: class_names[k]) if class_names is not None else str
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.0), layout="constrained",
                             gridspec_kw={"width_ratios": [1, 1.45, 1.1, 1.6]})
    title = f"#{state.index}: explain {name(int(e.target[0]))}"
    if e.contrast is not None:
        title += f" vs {name(int(e.contrast[0]))}"
    if labels is not None:
        title += f"\ntrue {name(int(labels[state.index]))}, " \
                 f"pred {name(int(e.logits[0].argmax()))}"
    axes[0].imshow(viz._hwc_float(x[0]))
    axes[0].set(title=title, xticks=[], yticks=[])
    viz.plot_part_overlay(x[0], e.labels[0], e.part_names, ax=axes[1])
    im = axes[2].imshow(e.part_probs[0, part].numpy(), vmin=0, vmax=1, cmap="magma")
    axes[2].set(title=f"P({e.part_names[part]})", xticks=[], yticks=[])
    fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.04)
    for ax in axes[:3]:
        ax.grid(False)
    viz.plot_contributions(e, 0, ax=axes[3])
    viz.refit_contributions(fig, [(axes[3], e, 0, None)])
    return fig


def build_explorer(explainer: PartExplainer, images: torch.Tensor,
                   class_names: Sequence[str] | None = None,
                   labels: Sequence[int] | torch.Tensor | None = None,
                   state: ExplorerState | None = None
                   ) -> ipywidgets.VBox:
    """An ipywidgets box: choose image, target class, mode and part; see parts, the part's
    probability map and the contributions. Returns the box (a VBox); ``box.render_state()``
    gives the current :class:`ExplorerState`."""
    import ipywidgets as widgets
    from IPython.display import display

    class ExplorerBox(widgets.VBox):
        """The explorer's VBox, with ``render_state()`` for tests and scripted use."""

        def __init__(self, children: Sequence[Any],
                     render_state: Callable[[], ExplorerState]):
            super().__init__(children)
            self.render_state = render_state

    state = state or ExplorerState()
    K = explainer.classifier.num_classes
    cls_options = [("predicted", -1)] + [
        (class_names[k] if class_names is not None else str(k), k) for k in range(K)]
    part_options = [("top contributor", -1)] + [(n, p) for p, n in
                                                enumerate(explainer.part_names)]
    w_index = widgets.IntSlider(value=state.index, min=0, max=len(images) - 1,
                                description="image", continuous_update=False)
    w_target = widgets.Dropdown(options=cls_options, value=-1 if state.target is None
                                else state.target, description="class")
    w_mode = widgets.Dropdown(options=[(d, n) for n, d in explorer_modes(explainer).items()],
                              value=state.mode or default_mode(explainer), description="mode")
    w_part = widgets.Dropdown(options=part_options, value=-1 if state.part is None
                              else state.part, description="part map")
    out = widgets.Output()

    def current() -> ExplorerState:
        mode = w_mode.value
        if not isinstance(mode, str):
            raise ValueError(f"the mode dropdown holds {mode!r}, expected one of "
                             f"{list(EXPLORER_MODES)}")
        return ExplorerState(index=w_index.value,
                             target=None if w_target.value == -1 else w_target.value,
                             mode=mode, part=None if w_part.value == -1 else w_part.value)

    def redraw(*_: Any) -> None:
        with out:
            out.clear_output(wait=True)
            fig = render(explainer, images, current(), class_names, labels)
            display(fig)
            plt.close(fig)

    for w in (w_index, w_target, w_mode, w_part):
        w.observe(redraw, names="value")
    box = ExplorerBox([widgets.HBox([w_index, w_target]), widgets.HBox([w_mode, w_part]), out],
                      current)
    redraw()
    return box


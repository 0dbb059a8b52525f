"""Peer explainers as contribution rules: each library's output mapped onto the PDM's parts.

Every rule here runs a published explainer as its own documentation shows it and maps its
output to one number per label of the argmax part map (absent parts get 0); the mapping is
the registry entry's ``note`` (:mod:`partslib.explain.registry`), shown next to its T2 row.

* :class:`CaptumAblationRule` -- Captum's ``FeatureAblation`` with the PDM label map as
  ``feature_mask`` (``[B, 1, H, W]``, broadcast over the 3 channels) and Captum's default
  baseline, the scalar 0 (a black part: partslib models normalise internally, so 0 is black,
  not the dataset mean). Its attribution of a group is the score drop when the group is set to
  the baseline; a part's contribution is that drop (logit units).
* :class:`CaptumShapleyRule` -- Captum's ``ShapleyValueSampling`` over the same mask and
  baseline, ``n_samples`` permutations drawn under ``torch.manual_seed(seed)`` with the global
  RNG state restored afterwards; a part's contribution is its Shapley estimate. Each
  permutation telescopes, so ``f(baseline) + Σ_p φ_p = f(x)``: the rule is complete with
  ``f(baseline)`` as its bias.
* :class:`DFFRule` -- pytorch-grad-cam's ``DeepFeatureFactorization`` of the final stage with
  ``computation_on_concepts=classifier.fc``, one image at a time (the factorisation is of the
  images it is given, so a batch would share concepts). Concept scores are the softmax of the
  concepts' logits, as the library's ``run_dff_on_image`` does; a part's contribution is
  ``Σ_c softmax_k(c) · (share of concept c's heatmap mass inside the part)`` (units ``none``).
* :class:`CRPRule` -- Concept Relevance Propagation (``zennit-crp``): ``CondAttribution`` with
  the condition ``{"y": [k]}`` and zennit's ``EpsilonPlusFlat`` composite, as CRP's README;
  BatchNorm merged and residual sums canonised (zennit's ResNet canonizers, and one for
  partslib's own basic block), on a copy of the classifier. A part's contribution is the
  relevance of the normalised image (the first layer's Flat rule reads no pixel values) summed
  over channels and inside the part (relevance is initialised with the logit, so it is close
  to logit units, less what biases absorb).

None of them leaves hooks on, or changes the mode or parameters of, the classifier: Captum
and DFF only run it forward (DFF's hooks are released on return), CRP works on a copy.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from partslib.explain.core import ExplainContext
from partslib.explain.rules import Rule, RuleResult
from partslib.models import ContractClassifier

__all__ = ["CRPRule", "CaptumAblationRule", "CaptumShapleyRule", "DFFRule", "part_sums"]


def part_sums(maps: Tensor, labels: Tensor, num_labels: int) -> Tensor:
    """``Σ_{u∈p} maps(u)`` per label: ``[B, num_labels]`` from maps and label maps ``[B,H,W]``
    (labels outside ``0..num_labels-1`` are counted nowhere)."""
    if maps.shape != labels.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and labels {tuple(labels.shape)} must have "
                         f"the same shape [B, H, W]")
    B = len(labels)
    lab = labels.reshape(B, -1).long()
    ok = (lab >= 0) & (lab < num_labels)
    out = torch.zeros(B, num_labels, dtype=maps.dtype, device=maps.device)
    vals = torch.where(ok, maps.reshape(B, -1), torch.zeros((), dtype=maps.dtype,
                                                          device=maps.device))
    return out.scatter_add_(1, torch.where(ok, lab, 0), vals)


def _part_means(maps: Tensor, labels: Tensor, num_labels: int) -> Tensor:
    """The mean of ``maps`` over each part's pixels (0 for absent parts)."""
    s = part_sums(maps, labels, num_labels)
    n = part_sums(torch.ones_like(maps), labels, num_labels)
    return torch.where(n > 0, s / n.clamp_min(1), torch.zeros_like(s))


def _need(module: str, package: str) -> None:
    try:
        __import__(module)
    except ImportError as e:
        raise ImportError(f"this peer rule needs {package} (pip install {package}, or "
                          f"pip install -e '.[all]')") from e


class _CaptumRule(Rule):
    """Shared by the Captum rules: the forward function, the mask and the baseline."""

    units = "logit"
    baseline = 0.0  # Captum's default baseline for images: the scalar 0

    def __init__(self, features: Callable[[Tensor], Tensor] | None = None):
        _need("captum", "captum")
        self.features = features

    def _forward(self, ctx: ExplainContext) -> Callable[[Tensor], Tensor]:
        clf, feats = ctx.classifier, self.features
        if feats is None:
            return clf
        return lambda x: clf.head(feats(x).contiguous())

    @staticmethod
    def _mask(labels: Tensor) -> Tensor:
        """The PDM label map ``[B, 1, H, W]``: Captum's ``feature_mask``, which it broadcasts
        over the 3 channels (a ``[B, 3, H, W]`` copy gives the same numbers, but Captum's
        Shapley sampling walks every mask element in Python once per permutation)."""
        return labels[:, None].contiguous()

    def _scores(self, ctx: ExplainContext, attr: Tensor) -> Tensor:
        """Per-part values of an attribution constant on each part (channel 0)."""
        c = _part_means(attr[:, 0].to(ctx.score.dtype), ctx.labels, ctx.num_labels)
        return torch.where(ctx.present, c, torch.zeros_like(c))

    def _targets(self, ctx: ExplainContext) -> Tensor:
        if ctx.contrast is not None:
            raise ValueError(f"the {self.name} rule explains one class logit, not a margin")
        return ctx.target


class CaptumAblationRule(_CaptumRule):
    """Captum ``FeatureAblation`` over the PDM's parts (module docstring)."""

    name = "captum-ablation"

    def describe(self) -> str:
        """``captum-ablation:baseline=0``."""
        return f"captum-ablation:baseline={self.baseline:g}"

    def __call__(self, ctx: ExplainContext) -> RuleResult:
        """The score drop when each present part is set to Captum's baseline."""
        from captum.attr import FeatureAblation

        k = self._targets(ctx)
        ppe = max(1, ctx.batch_size // max(1, len(ctx.images)))
        attr = FeatureAblation(self._forward(ctx)).attribute(
            ctx.images, baselines=self.baseline, target=k, feature_mask=self._mask(ctx.labels),
            perturbations_per_eval=ppe)
        return RuleResult(contributions=self._scores(ctx, attr))


class CaptumShapleyRule(_CaptumRule):
    """Captum ``ShapleyValueSampling`` over the PDM's parts (module docstring)."""

    name = "captum-shapley"
    complete = True

    def __init__(self, n_samples: int = 25, seed: int = 0,
                 features: Callable[[Tensor], Tensor] | None = None):
        if not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
        super().__init__(features)
        self.n_samples, self.seed = n_samples, int(seed)

    def describe(self) -> str:
        """``captum-shapley:n=<n_samples>,seed=<seed>,baseline=0``."""
        return f"captum-shapley:n={self.n_samples},seed={self.seed},baseline={self.baseline:g}"

    def __call__(self, ctx: ExplainContext) -> RuleResult:
        """Shapley estimates per present part, image by image (same permutations for every
        image, whatever batch it is in), and ``f(baseline)`` as the bias."""
        from captum.attr import ShapleyValueSampling

        k = self._targets(ctx)
        fwd = self._forward(ctx)
        svs = ShapleyValueSampling(fwd)
        mask = self._mask(ctx.labels)
        attrs = []
        for i in range(len(ctx.images)):
            n_feat = int(mask[i].max()) + 1
            ppe = max(1, min(ctx.batch_size, self.n_samples * n_feat))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                attrs.append(svs.attribute(
                    ctx.images[i:i + 1], baselines=self.baseline, target=k[i:i + 1],
                    feature_mask=mask[i:i + 1], n_samples=self.n_samples,
                    perturbations_per_eval=ppe))
        attr = torch.cat(attrs) if attrs else ctx.images.new_zeros(ctx.images.shape)
        base = fwd(torch.full_like(ctx.images[:1], self.baseline))[0]
        return RuleResult(contributions=self._scores(ctx, attr),
                          bias=base[k].to(ctx.score.dtype))


class DFFRule(Rule):
    """pytorch-grad-cam ``DeepFeatureFactorization`` mapped onto the PDM's parts (module
    docstring); its concept heatmaps are the rule's maps (their score-weighted sum)."""

    name = "dff"
    units = "none"
    paint = None

    def __init__(self, n_components: int = 5):
        if not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f"n_components must be an int >= 1, got {n_components!r}")
        self.n_components = n_components

    def describe(self) -> str:
        """``dff:<n_components>``."""
        return f"dff:{self.n_components}"

    def _one(self, dff: Any, x: Tensor, k: int, labels: Tensor, L: int) -> tuple[Tensor, Tensor]:
        """Contributions ``[L]`` and the score-weighted concept map ``[H, W]`` of one image."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn's NMF ConvergenceWarning
            _, heat, outputs = dff(x[None], self.n_components)
        heat_t = torch.from_numpy(heat[0]).double()  # [n, H, W], each min-max scaled
        score = torch.softmax(torch.from_numpy(outputs).double(), dim=-1)[:, k]  # [n]
        mass = part_sums(heat_t, labels.cpu().expand(len(heat_t), -1, -1), L)  # [n, L]
        share = mass / mass.sum(1, keepdim=True).clamp_min(1e-12)
        return score @ share, torch.einsum("n,nhw->hw", score, heat_t)

    def __call__(self, ctx: ExplainContext) -> RuleResult:
        """Score-weighted concept mass per part, image by image."""
        from pytorch_grad_cam import DeepFeatureFactorization

        clf, L = ctx.classifier, ctx.num_labels
        if ctx.contrast is not None:
            raise ValueError("the dff rule explains one class, not a margin")
        dev = ctx.score.device
        dff = DeepFeatureFactorization(  # the library hands the concepts to fc on the CPU
            model=clf, target_layer=getattr(clf, clf.final_stage),
            computation_on_concepts=lambda t: clf.fc(t.to(dev)))
        cs, maps = [], []
        try:
            for i in range(len(ctx.images)):
                c, m = self._one(dff, ctx.images[i], int(ctx.target[i]), ctx.labels[i], L)
                cs.append(c)
                maps.append(m)
        finally:
            dff.activations_and_grads.release()
        if not cs:
            return RuleResult(contributions=torch.zeros(0, L, device=dev))
        c = torch.stack(cs).to(torch.float32).to(dev)
        return RuleResult(contributions=torch.where(ctx.present, c, torch.zeros_like(c)),
                          maps=torch.stack(maps).to(torch.float32).to(dev))


# ----------------------------------------------------------------------------- CRP


class _LRPNet(nn.Module):
    """A frozen copy of a contract classifier for LRP, with the global average pool of its head
    as a module (zennit's Norm rule then spreads relevance by activation share; the plain
    ``mean`` would spread it evenly)."""

    def __init__(self, clf: ContractClassifier):
        super().__init__()
        if type(clf).head is not ContractClassifier.head:
            raise ValueError(f"the crp rule needs the contract's head (GAP + fc), got "
                             f"{type(clf).__name__} overriding it")
        self.src = copy.deepcopy(clf).eval()
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False  # zennit's hooks cannot follow in-place activations
        self.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of images ``x`` in [0, 1] (the copy normalises them, as the classifier)."""
        A = self.src.features(x)[self.src.final_stage]
        return self.src.fc(self.pool(A).flatten(1))


def _basic_block_forward(self: Any, x: Tensor) -> Tensor:
    """partslib's basic block with the residual sum as zennit's ``Sum`` module."""
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(self.canonizer_sum(torch.stack([self.shortcut(x), out], dim=-1)))


def _canonizers() -> list[Any]:
    """BatchNorm merged into the convolutions, residual sums as ``Sum`` modules."""
    from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm
    from zennit.layer import Sum
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

    from partslib.models import _BasicBlock

    def attribute_map(name: str, module: nn.Module) -> dict[str, Any] | None:
        if isinstance(module, _BasicBlock):
            return {"forward": _basic_block_forward.__get__(module), "canonizer_sum": Sum()}
        return None

    return [SequentialMergeBatchNorm(), AttributeCanonizer(attribute_map),
            ResNetBasicBlockCanonizer(), ResNetBottleneckCanonizer()]


_KNOWN = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Linear,
          nn.Sequential, nn.Identity)


def _check_modules(net: nn.Module) -> None:
    """Raise ``ValueError`` for a module the canonizers do not cover (a residual add zennit
    would not see would duplicate relevance)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    from partslib.models import _BasicBlock

    for name, m in net.named_modules():
        if name and not isinstance(m, (*_KNOWN, ContractClassifier, _BasicBlock, BasicBlock,
                                       Bottleneck)):
            raise ValueError(f"the crp rule covers classifiers built of convolutions, "
                             f"BatchNorm, ReLU, pooling and partslib's or torchvision's ResNet "
                             f"blocks; module {name!r} is a {type(m).__name__}")


class CRPRule(Rule):
    """Concept Relevance Propagation of the explained class summed inside each PDM part
    (module docstring); the input relevance is the rule's map."""

    name = "crp"
    units = "none"
    paint = None

    def __init__(self) -> None:
        _need("crp", "zennit-crp")

    def __call__(self, ctx: ExplainContext) -> RuleResult:
        """LRP relevance (EpsilonPlusFlat) of the target logit, summed per part."""
        from crp.attribution import CondAttribution
        from zennit.composites import EpsilonPlusFlat

        if ctx.contrast is not None:
            raise ValueError("the crp rule explains one class logit, not a margin")
        clf = ctx.classifier
        conditions = [{"y": [int(k)]} for k in ctx.target]
        # gradients even when called under torch.inference_mode (the copy and the input are
        # made outside it, so autograd may record them)
        with torch.inference_mode(False), torch.enable_grad():
            net = _LRPNet(clf)
            _check_modules(net)
            attribution = CondAttribution(net)
            composite = EpsilonPlusFlat(canonizers=_canonizers())
            x = ctx.images.clone().requires_grad_(True)
            attribution(x, conditions, composite)
            # relevance of the normalised image z = (x - mean) / std: autograd divided it by
            # std on its way through the normalisation, which LRP treats as the identity
            assert x.grad is not None
            rel = (x.grad * clf.std).sum(1).detach().clone()  # [B, H, W]
        c = part_sums(rel.to(ctx.score.dtype), ctx.labels, ctx.num_labels)
        return RuleResult(contributions=torch.where(ctx.present, c, torch.zeros_like(c)),
                          maps=rel.to(torch.float32))

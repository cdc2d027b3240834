"""The frozen ImageNet backbone both image stages run: one forward pass → every feature *view*.

Shared by the build's embedding pass (:class:`dsbuild.model.embeddings.Embedder`) and the model stage's
feature cache (:mod:`dsbuild.model.features`), so neither imports the other for it. torch is imported inside
the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Views of one forward pass (all float32, one row per image):
#: ``pool``   the backbone's pooled penultimate features (timm ``forward_head(pre_logits=True)``;
#:            torchvision: the last stage's global average) — the embedding (L2-normalise it);
#: ``s8_g2``  the last stride-8 stage's output average-pooled to a 2×2 grid (lite0: 40 ch → 160);
#: ``s16_g2`` the last stride-16 stage's output pooled 2×2 (lite0: 112 → 448);
#: ``s32_g1`` the last stage's output, global average (lite0: 320).
VIEWS = ("pool", "s8_g2", "s16_g2", "s32_g1")
_STAGE_GRIDS = {"s8_g2": (8, 2), "s16_g2": (16, 2), "s32_g1": (32, 1)}


def _stage_candidates(net: Any, library: str) -> list[str]:
    """Module paths of the backbone's stages, in order (timm ``blocks.N`` / ``stages.N``; torchvision top-level children)."""
    for attr in ("blocks", "stages", "layers"):
        seq = getattr(net, attr, None)
        if library == "timm" and seq is not None and hasattr(seq, "__len__") and len(seq) > 1:
            return [f"{attr}.{i}" for i in range(len(seq))]
    skip = {"fc", "classifier", "head", "avgpool", "global_pool", "heads", "dropout"}
    return [name for name, _ in net.named_children() if name not in skip]


def _find_stages(net: Any, library: str, size: int = 256) -> dict[str, str]:
    """View name (``s8_g2``, ``s16_g2``, ``s32_g1``) → module path: the *last* stage at that reduction.

    Found by one probe forward of a ``size``×``size`` input (256: divisible by 32, so every
    reduction is exact; the stages do not depend on the input size); a missing reduction
    leaves the view out.
    """
    import torch

    modules = dict(net.named_modules())
    reduction: dict[str, int] = {}
    hooks = [modules[name].register_forward_hook(
        lambda mod, inp, out, name=name: reduction.__setitem__(name, size // out.shape[-1])
        if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] > 0 else None)
        for name in _stage_candidates(net, library)]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    out: dict[str, str] = {}
    ordered = [n for n in _stage_candidates(net, library) if n in reduction]
    for view, (r, _) in _STAGE_GRIDS.items():
        at = [n for n in ordered if reduction[n] == r]
        if r == 32 and not at and ordered:
            at = [ordered[-1]]
        if at:
            out[view] = at[-1]
    return out


def _frozen_body_class() -> Any:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class FrozenBody(nn.Module):
        """A frozen ImageNet backbone → :data:`VIEWS` (one forward pass, hooks on the stages).

        Input: ``n × 3 × size × size`` uint8-valued float tensor (0–255, RGB); the module
        applies the weights' own normalisation (``mean``/``std`` buffers, 0–1 scale).
        Output: view name → ``n × width`` float tensor.
        """

        def __init__(self, net: nn.Module, library: str, stages: dict[str, str], mean: Any, std: Any) -> None:
            super().__init__()
            self.net, self.library, self.stages = net, library, dict(stages)
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
            self._grab: dict[str, Any] = {}
            modules = dict(net.named_modules())
            for view, path in self.stages.items():
                modules[path].register_forward_hook(lambda mod, inp, out, view=view: self._grab.__setitem__(view, out))

        def forward(self, x: Any) -> dict[str, Any]:
            x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
            self._grab.clear()
            if self.library == "timm":
                pool = self.net.forward_head(self.net.forward_features(x), pre_logits=True)
            else:
                self.net(x)
                pool = None
            views = {}
            for view, out in self._grab.items():
                grid = _STAGE_GRIDS[view][1]
                views[view] = F.adaptive_avg_pool2d(out.float(), grid).flatten(1)
            views["pool"] = pool.flatten(1).float() if pool is not None else views["s32_g1"]
            return views

    return FrozenBody


def frozen_body(arch: str, size: int, *, weights: str | None = None, pretrained: bool = True) -> tuple[Any, dict[str, Any]]:
    """``(FrozenBody, info)`` for ``arch``: pretrained weights (offline packages first, see
    :func:`dsbuild.model.weights.load_backbone`), eval mode, no gradients.

    ``info``: ``library``, ``name`` (the library's model name), ``stages`` (view → module
    path), ``normalize`` (``mean``/``std`` from the weights' own config, never assumed).
    ``pretrained=False`` builds the same network with random weights (to load a saved state).
    """
    import torch

    from dsbuild.model.weights import load_backbone

    backbone, net = load_backbone(arch, pretrained=pretrained, weights=Path(weights) if weights else None)
    net.eval()
    stages = _find_stages(net, backbone.library)
    mean, std = backbone.normalize(net)
    body = _frozen_body_class()(net, backbone.library, stages, mean, std).eval()
    for p in body.parameters():
        p.requires_grad_(False)
    body.to(memory_format=torch.channels_last)
    info = {"library": backbone.library, "name": backbone.name, "stages": stages,
            "normalize": {"mean": list(mean), "std": list(std)}}
    return body, info

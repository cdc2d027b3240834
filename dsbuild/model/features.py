"""What a trained network says about images: softmax probabilities and mid-level features.

``get_probs`` gives the ``n × classes`` probabilities of a fastai learner (valid
transforms); ``get_stage_features`` gives spatial grids of the body's mid-level
stages (and the penultimate features) — the views the out-of-fold scorer
(:mod:`dsbuild.model.oof`) fits its heads on. An embedding-based finder would
add its extractor here. torch is imported inside the functions.
"""

from __future__ import annotations

from typing import Any


def get_probs(learn: Any, df: Any, *, loader: Any = None) -> Any:
    """Softmax probabilities (``len(df) × n_classes`` numpy float32) for ``df``'s images, valid transforms."""
    import numpy as np

    if len(df) == 0:
        return np.zeros((0, len(learn.dls.vocab)), dtype=np.float32)
    frame = df.assign(path=df["path"].astype(str))
    dl = learn.dls.test_dl(frame, bs=max(64, learn.dls.bs))
    with learn.no_bar(), learn.no_logging():
        probs, _ = learn.get_preds(dl=dl)
    return probs.float().numpy()


def stage_modules(learn: Any, size: int, reductions: tuple[int, ...] = (8, 16)) -> dict[int, str]:
    """Names of the body's last modules at the given spatial reductions (input side / map side).

    Found by one probe forward of a ``size``×``size`` input: for each reduction, the module
    that fires *last* with a 4-D output of that reduction (a container's hook fires after
    its children, so a whole stage wins over its parts). That is the richest map the body
    computes at that resolution before it strides down: ``5`` / ``6`` (layer2 / layer3) of
    a torchvision ResNet body; in a timm EfficientNet the first block of the next stage
    expands its input (1×1 conv + BN + activation) before its strided depthwise conv, so
    ``model.blocks.3.0.bn1`` / ``model.blocks.5.0.bn1`` (240 / 672 channels for lite0).
    Missing reductions are left out.
    """
    import torch

    body = learn.model[0]
    seen: dict[int, str] = {}
    hooks = []
    for name, module in body.named_modules():
        if name:
            hooks.append(module.register_forward_hook(
                lambda mod, inp, out, name=name: seen.__setitem__(size // out.shape[-1], name)
                if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] > 0 else None))
    was_training = body.training
    try:
        body.eval()
        with torch.no_grad():
            body(torch.zeros(1, 3, size, size, device=next(body.parameters()).device))
    finally:
        body.train(was_training)
        for h in hooks:
            h.remove()
    return {r: seen[r] for r in reductions if r in seen}


def get_stage_features(learn: Any, df: Any, *, size: int, reductions: tuple[int, ...] = (8, 16), max_dim: int = 2048,
                       penultimate: bool = False) -> dict[str, Any]:
    """Spatial mid-level features for ``df``'s images (valid transforms, ``size`` px), one array per stage.

    Each stage output at ``reductions`` (see :func:`stage_modules`) is average-pooled to a
    G×G grid, G the largest of 4, 2, 1 with ``channels × G² ≤ max_dim``, and flattened
    (numpy float32, one row per image; efficientnet_lite0 at 64 px: 240 × 2×2 and 672 × 1×1).
    A grid keeps *where* a pattern is, which a global pool throws away (a stroke at the
    top or the bottom makes a 7 or an L).
    ``penultimate=True`` adds ``"penultimate"``: the input of the head's last Linear.
    Keys: ``"r8"``, ``"r16"``, ... and ``"penultimate"``.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    names = stage_modules(learn, size, reductions)
    modules = dict(learn.model[0].named_modules())
    chunks: dict[str, list[Any]] = {f"r{r}": [] for r in names}
    hooks = []

    def grab(key: str):
        def hook(mod: Any, inp: Any, out: Any) -> None:
            ch = out.shape[1]
            g = next((g for g in (4, 2) if ch * g * g <= max_dim and min(out.shape[-2:]) >= g), 1)
            chunks[key].append(F.adaptive_avg_pool2d(out.detach().float(), g).flatten(1).cpu())
        return hook

    for r, name in names.items():
        hooks.append(modules[name].register_forward_hook(grab(f"r{r}")))
    if penultimate:
        last = [m for m in learn.model[1].modules() if isinstance(m, torch.nn.Linear)][-1]
        chunks["penultimate"] = []
        hooks.append(last.register_forward_hook(lambda mod, inp, out: chunks["penultimate"].append(inp[0].detach().float().cpu())))
    try:
        get_probs(learn, df)
    finally:
        for h in hooks:
            h.remove()
    return {k: (torch.cat(v).numpy() if v else np.zeros((0, 0), dtype=np.float32)) for k, v in chunks.items()}

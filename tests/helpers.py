"""Helpers shared by the tests (not fixtures): real photos and the CLI run in-process."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image

from dsbuild.cli import main


def skimage_photo(name: str) -> Image.Image:
    """A real photo shipped with scikit-image (``skimage.data.<name>()``), as a PIL image in its own mode."""
    import skimage.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Image.fromarray(getattr(skimage.data, name)())


def run_cli(capsys, manifest: Path, *args: str) -> tuple[int, str, str]:
    """``dsbuild -m MANIFEST ARGS`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(["-m", str(manifest), *args])
    out, err = capsys.readouterr()
    return code, out, err

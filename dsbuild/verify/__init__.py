"""verify/: the per-image stage — decode once under limits, then hash and score that decode.

==============  ==================================================================
decode.py       magic-byte sniffing, allow-list, pixel limits, one full decode
analyze.py      :func:`analyze_file` / :func:`analyze_bytes` → :class:`ImageRecord`
                (the unit of work :mod:`dsbuild.executor` ships to workers)
hashing.py      perceptual hashes of the decoded image (imagehash-identical)
quality.py      CleanVision-style quality scores of the decoded image
settings.py     ``[verify]`` and ``[quality]`` settings (no heavy imports)
==============  ==================================================================
"""

from importlib import import_module
from typing import Any

_LAZY = {"ImageRecord": "analyze", "analyze_bytes": "analyze", "analyze_file": "analyze", "REASONS": "decode",
         "VERIFIER_REVISION": "decode", "VerifySettings": "settings", "QualitySettings": "settings"}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    """The main names of the submodules, imported on first use (so importing a submodule never imports them all)."""
    if name in _LAZY:
        return getattr(import_module(f"dsbuild.verify.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'dsbuild.verify' has no attribute {name!r}")

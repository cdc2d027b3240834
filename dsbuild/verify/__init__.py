"""verify/: the per-image stage — decode once under limits, then hash and score that decode.

==============  ==================================================================
decode.py       magic-byte sniffing, allow-list, pixel limits, one full decode
analyze.py      :func:`analyze_file` / :func:`analyze_bytes` → :class:`ImageRecord`
                (the unit of work :mod:`dsbuild.executor` ships to workers)
hashing.py      perceptual hashes of the decoded image (imagehash-identical)
quality.py      CleanVision-style quality scores of the decoded image
==============  ==================================================================
"""

from dsbuild.verify.analyze import ImageRecord, analyze_bytes, analyze_file
from dsbuild.verify.decode import REASONS

__all__ = ["REASONS", "ImageRecord", "analyze_bytes", "analyze_file"]

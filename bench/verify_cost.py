"""ms per image of verification's decode (``decode_checked``) over a folder tree, and each file's outcome.

    python bench/verify_cost.py DIR OUT.json
    PYTHONPATH=/path/to/other/checkout python bench/verify_cost.py DIR OTHER.json   # the same for another checkout

Every file is decoded in-process three times; the fastest time counts (the
machine is shared: the minimum is the least disturbed). Prints the checkout it
imported, the file count and the mean ms/image; ``OUT.json`` maps each file
(relative to DIR) to ``[status, reason, format, ms]``, so two runs can be
compared file by file (outcome changes, per-format cost). Used on Pillow's
``Tests/images`` (``bench/pillow_corpus.py`` fetches them) and on 300 photos
re-encoded from ``skimage.data`` for the damaged-data checks of branch dmg.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import dsbuild
from dsbuild.verify.decoders import Rejected, decode_checked
from dsbuild.verify.settings import VerifySettings


def main() -> None:
    root, out = Path(sys.argv[1]), sys.argv[2]
    settings = VerifySettings()
    results = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            try:
                _img, info = decode_checked(data, settings)
                outcome = ("ok", None, info.get("format"))
            except Rejected as rej:
                outcome = ("rejected", rej.reason, rej.info.get("format"))
            except Exception as exc:  # noqa: BLE001 - a crash is an outcome to report, not to stop at
                outcome = ("crash", type(exc).__name__, None)
            best = min(best, time.perf_counter() - start)
        results[str(path.relative_to(root))] = (*outcome, best * 1000)
    Path(out).write_text(json.dumps(results))
    print(dsbuild.__file__, len(results), "files, mean ms/image",
          round(statistics.mean(v[3] for v in results.values()), 3))


if __name__ == "__main__":
    main()

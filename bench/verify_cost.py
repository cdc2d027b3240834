"""ms per image of verification's decode (``decode_checked``) over a folder tree, and each file's outcome, beside a
baseline commit's in the same run.

    python bench/verify_cost.py DIR                    # this checkout beside main's dsbuild (``--base``)
    python bench/verify_cost.py DIR --base 2aa0093     # beside another commit's
    python bench/verify_cost.py DIR --json OUT.json    # this checkout only, per-file results to OUT.json

The baseline is measured in a child process importing the ``dsbuild`` package of ``--base`` (``git archive`` into
a temporary folder), on the same files, right before this checkout; printed: files, mean and median ms/image of
each and their ratio, and every file whose outcome differs.

Every file is decoded in-process three times; the fastest time counts (the
machine is shared: the minimum is the least disturbed). Prints the checkout it
imported, the file count and the mean ms/image; ``OUT.json`` maps each file
(relative to DIR) to ``[status, reason, format, ms]``, so two runs can be
compared file by file (outcome changes, per-format cost). Used on Pillow's
``Tests/images`` (``bench/pillow_corpus.py`` fetches them) and on 300 photos
re-encoded from ``skimage.data`` for the damaged-data checks of branch dmg.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dsbuild
from dsbuild.verify.decoders import Rejected, decode_checked
from dsbuild.verify.settings import VerifySettings


def measure(root: Path) -> dict[str, list]:
    """file (relative to ``root``) → [status, reason, format, fastest ms of three decodes]."""
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
        results[str(path.relative_to(root))] = [*outcome, best * 1000]
    return results


def baseline(root: Path, rev: str) -> dict[str, list]:
    """:func:`measure` run by the ``dsbuild`` package of commit ``rev`` (a child process)."""
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="verify-cost-") as tmp:
        archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "dsbuild"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        out = Path(tmp) / "base.json"
        env = {**os.environ, "PYTHONPATH": tmp}
        subprocess.run([sys.executable, __file__, str(root), "--json", str(out)], check=True, env=env, cwd=tmp)
        return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--base", default="main", help="the baseline commit (default main)")
    ap.add_argument("--json", type=Path, help="this checkout only: write its per-file results here")
    args = ap.parse_args()
    if args.json:
        args.json.write_text(json.dumps(measure(args.root)))
        return
    before = baseline(args.root, args.base)
    after = measure(args.root)
    print(f"{len(after)} files under {args.root}; this checkout: {Path(dsbuild.__file__).parent}; base: {args.base}")
    for what, f in (("mean", statistics.mean), ("median", statistics.median)):
        b, a = f(v[3] for v in before.values()), f(v[3] for v in after.values())
        print(f"  {what:6s} ms/image  base {b:7.3f}  this {a:7.3f}  ratio {a / b:5.2f}×")
    changed = sorted(k for k in after if k in before and after[k][:2] != before[k][:2])
    print(f"  outcome changed: {len(changed)}")
    for k in changed:
        print(f"    {k}: {'/'.join(str(x) for x in before[k][:2] if x)} → {'/'.join(str(x) for x in after[k][:2] if x)}")


if __name__ == "__main__":
    main()

"""Benchmark: near duplicates from two signals (phash views + embeddings) beside the phash-only baseline.

Prints, in one run, for the same decoded images (the build's decodes: JPEG draft ≥ 128 px for the phash and its views,
≥ 320 px for the embeddings, ``--embed-decode``):

* **hard set** (bench/planted_hard.py: 20 real photos, their quadrants, a stereo pair, CIFAR
  photos at 32 px and upscaled to 256 px, each with 10 hard copies — central crops 90/80/70 %,
  mirror, 90° rotation, grayscale, squeeze 0.8, strong colour shift, JPEG q40, resize 50 % —
  plus bursts, pan windows, blanks and 1,000 CIFAR distractors): pair precision/recall after
  grouping, per transformation and overall;
* **easy set**: the same pictures with bench/dup_quality.py's 12 easy copies (JPEG q 90–30,
  format changes, resize 50/150 %, 5 % crop, brightness ×1.2/×0.8, watermark): no loss allowed;
* **extra set** (``--sets extra``): the same pictures, no original, four copies each that the views
  do not hit exactly — central crops 85 % and 75 %, an 80 % crop moved 7 % off centre, an 85 %
  crop mirrored and saved as JPEG q60: pair precision/recall only;
* **small images**: scikit-learn's 1,797 digits rendered at 48 px (bicubic, as the issue's
  count; and nearest-neighbour) and CIFAR-10 (the 5,000 dev images; ``--cifar50k DIR`` adds
  all 50,000 training images): images marked near duplicates, groups, groups with more than
  one label (every digit is its own drawing: all its near duplicates are false);
* **cost per image** (CPU seconds, this process, all threads): the build's per-image work
  (:func:`dsbuild.verify.analyze_bytes`: decode, phash, quality scores, pixel digest) vs the
  signals stage (a second decode, phash views + effective side, the embedding), and the
  neighbour search.

Rules (each a :class:`~dsbuild.dedup.settings.DedupSettings`):

==================  ===========================================================================
phash (components)  phash ≤ 10, connected components (arch before the hostile-input merge)
phash (star)        phash ≤ 10, grouped around representatives (no chaining)
views               + mirror/rotation views ≤ 4 bits, crop views ≤ 6, no confirmation
views+confirm       + embedding confirmation by effective side (0.99 / 0.97 / 0.80 / 0.40)
no detail check     + pixel confirmation + embedding neighbours ≥ 0.85 verified by the window check
                    (the defaults before the detail check: ``detail_confirm = 0``)
default             the defaults: links between images of ≥ 24 px of detail also share their fine detail
==================  ===========================================================================

Grouping (all but the first rule): around representatives, most pixels first, then the image
with the most links (the original of a family of edits), then the content hash.

    .venv/bin/python bench/dup_semantic.py                 # hard set, digits, CIFAR 5k (~10 min on 2 idle cores)
    .venv/bin/python bench/dup_semantic.py --quick         # smaller hard set, 600 digits, 1,000 CIFAR
    .venv/bin/python bench/dup_semantic.py --cifar50k /path/to/cifar10/train   # + all 50,000 (train/<class>/*.jpg)

Embeddings are cached by blob in ``--cache`` (default /tmp/dsbuild-bench-features, the
library's :class:`~dsbuild.model.embeddings.FeatureCache`); the embedding cost is always measured
on ``--time-sample`` images embedded afresh.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dsbuild.dedup import neardup  # noqa: E402
from dsbuild.dedup.search import find_pairs, group  # noqa: E402
from dsbuild.dedup.settings import DedupSettings  # noqa: E402
from dsbuild.verify import hashing  # noqa: E402
from dsbuild.verify.settings import VerifySettings  # noqa: E402

DEFAULT = DedupSettings()
RULES = ("phash (components)", "phash (star)", "views", "views+confirm", "no detail check", "default")


def cpu() -> float:
    return time.process_time()


# --------------------------------------------------------------------------- signals of a set of files


def signals(datas: list[bytes], *, cache_dir: Path, threads: int, time_sample: int, verify: VerifySettings,
            views_pass: bool = False, embed_side: int | None = None) -> dict:
    """Decode, hash, pixel signals and embeddings of ``datas`` (file bytes), with CPU seconds per image per stage.
    ``embed_side``: the short side JPEGs are decoded to at least for the embedding, as the build's embedding pass does
    (default :func:`dsbuild.dedup.signals.embed_decode_side`: 320 px; 128 gives the build before 2026-12-02, one decode
    for everything); the phash, its views, the effective side, thumbnails and pixel counts keep the hash's 128 px
    decode."""
    from dsbuild.dedup.signals import embed_decode_side
    from dsbuild.model.embeddings import Embedder, FeatureCache, FeatureSpec, emb_key
    from dsbuild.verify import analyze_bytes
    from dsbuild.verify.decode import decode

    n = len(datas)
    dedup = DedupSettings()
    t = {}
    c0 = cpu()
    for d in datas[: min(n, 2000)]:
        analyze_bytes(d, verify=verify, dedup=dedup, store_dir=None)
    t["build per image (analyze_bytes)"] = (cpu() - c0) / min(n, 2000)
    c0 = cpu()
    imgs = [decode(d, verify)[0] for d in datas]
    t["decode"] = (cpu() - c0) / n
    c0 = cpu()
    ph = np.array([hashing.hash_to_int(hashing.compute_hash(im)) for im in imgs], dtype=np.uint64)
    hexes = [f"{h:016x}" for h in ph]
    t["phash"] = (cpu() - c0) / n
    side = embed_decode_side(DedupSettings()) if embed_side is None else embed_side
    c0 = cpu()
    eimgs = imgs if side == 128 else [decode(d, verify, analysis_side=side)[0] for d in datas]
    t["decode for the embedding pass"] = (cpu() - c0) / n
    c0 = cpu()
    sig = [neardup.pixel_signals(im) for im in imgs]
    t["phash views + effective side"] = (cpu() - c0) / n
    views = neardup.parse_views([s[0] for s in sig])
    eff = np.array([s[1] for s in sig])
    shas = [emb_key(hashlib.sha256(d).hexdigest(), None) for d in datas]  # the cache's keys (blob and pixels)
    spec = FeatureSpec(arch=DEFAULT.embed_arch, size=DEFAULT.embed_size)
    embedder = Embedder(spec, threads=threads, views=views_pass)
    embed = (lambda ims: embedder.embed_views(ims)[0]) if views_pass else embedder.embed
    sample = list(range(0, n, max(1, n // time_sample)))[:time_sample]
    c0, w0 = cpu(), time.perf_counter()
    for s in range(0, len(sample), 32):
        embed([eimgs[i] for i in sample[s:s + 32]])
    t["embedding"] = (cpu() - c0) / max(1, len(sample))
    t["embedding wall (images/s)"] = len(sample) / max(time.perf_counter() - w0, 1e-9)
    cache = FeatureCache(cache_dir if side == 128 else cache_dir / f"decode-{side}", spec)
    todo = [i for i in range(n) if shas[i] not in cache]
    seen: set[str] = set()
    todo = [i for i in todo if not (shas[i] in seen or seen.add(shas[i]))]
    for s in range(0, len(todo), 512):
        chunk = todo[s:s + 512]
        cache.put([shas[i] for i in chunk], np.concatenate(
            [embed([eimgs[i] for i in chunk[k:k + 32]]) for k in range(0, len(chunk), 32)]))
    emb = cache.get(shas)
    thumbs = [None] * n

    def thumb(i: int):
        if thumbs[i] is None:
            thumbs[i] = neardup.thumbnail(imgs[i])
        return thumbs[i]

    pixels = np.array([im.size[0] * im.size[1] for im in imgs], dtype=np.int64)
    degenerate = np.array([hashing.is_degenerate(h) for h in hexes])
    return {"phash": ph, "views": views, "eff": eff, "emb": emb, "thumb": thumb, "pixels": pixels, "sha": shas,
            "usable": ~degenerate, "timing": t}


# --------------------------------------------------------------------------- rules and grouping


def star_groups(n: int, links: np.ndarray, pixels: np.ndarray, keys: list[str]) -> np.ndarray:
    """Representative of each item, grouped around representatives (no chaining): most pixels first, then the
    image with the most links (an original is linked to each of its edits, an edit often only to the original),
    then the content hash; each takes every ungrouped image linked to it."""
    group_near_duplicates = None
    rep = np.arange(n)
    if len(links) == 0:
        return rep
    prio = {i: (-int(pixels[i]), keys[i]) for i in range(n)}
    if group_near_duplicates is not None:
        leader, _ = group_near_duplicates(prio, [(int(a), int(b), int(d)) for a, b, d in links])
    else:
        nb: dict[int, dict[int, int]] = {}
        for a, b, d in links.tolist():
            nb.setdefault(a, {})[b] = min(d, nb.get(a, {}).get(b, d))
            nb.setdefault(b, {})[a] = min(d, nb.get(b, {}).get(a, d))

        def rank(v: int) -> tuple:  # most pixels, then MOST links (the original before its edits), then content
            return (prio[v][0], -len(nb[v]), prio[v][1])

        leader = {}
        for v in sorted(nb, key=rank):
            if v in leader:
                continue
            leader[v] = v
            for o, _d in sorted(nb[v].items(), key=lambda kv: (kv[1], rank(kv[0]))):
                leader.setdefault(o, v)
    for k, v in leader.items():
        rep[k] = v
    return rep


def run_rules(s: dict, extra: dict[str, DedupSettings] | None = None) -> dict[str, np.ndarray]:
    """Representative per item (n,) for each rule of :data:`RULES`, and of ``extra`` (name → settings, with the
    kNN check), each timed as "links: NAME"."""
    n = len(s["phash"])
    idx = np.flatnonzero(s["usable"])
    p = find_pairs(s["phash"][idx], DEFAULT.threshold)
    base = np.column_stack([idx[p[:, 0]], idx[p[:, 1]], p[:, 2]]) if len(p) else np.zeros((0, 3), np.int64)
    out = {"phash (components)": group(n, base), "phash (star)": star_groups(n, base, s["pixels"], s["sha"])}
    variants = {
        "views": (dataclasses.replace(DEFAULT, semantic=False), False),
        "views+confirm": (DEFAULT, False),
        "no detail check": (dataclasses.replace(DEFAULT, detail_confirm=0.0), True),
        "default": (DEFAULT, True),
        **{name: (st, True) for name, st in (extra or {}).items()},
    }
    for name, (settings, knn) in variants.items():
        c0 = cpu()
        links = neardup.near_links(s["phash"], s["usable"], settings, views=s["views"], eff_side=s["eff"],
                                   emb=s["emb"] if settings.semantic else None, thumb=s["thumb"] if knn else None)
        out[name] = star_groups(n, links.rows(), s["pixels"], s["sha"])
        if name in ("no detail check", "default") or name in (extra or {}):
            s["timing"][f"links: {name}"] = (cpu() - c0) / n
    return out


# --------------------------------------------------------------------------- scoring


def score_planted(rep: np.ndarray, pics: np.ndarray, variants: np.ndarray, care_pairs) -> dict:
    """Pair precision/recall after grouping (pairs in one group) and per-variant recall (copy grouped with its original)."""
    pos, care = care_pairs
    same = rep[:, None] == rep[None, :]
    np.fill_diagonal(same, False)
    tp = int((same & pos).sum()) // 2
    fp = int((same & care & ~pos).sum()) // 2
    n_pos = int(pos.sum()) // 2
    orig = {p: i for i, (p, v) in enumerate(zip(pics, variants)) if v == "orig"}
    per = {}
    for v in sorted(set(variants) - {"orig"}):
        ii = np.array([i for i in range(len(pics)) if variants[i] == v and pics[i] in orig])
        if len(ii):
            o = np.array([orig[pics[i]] for i in ii])
            per[v] = (float(np.mean(rep[ii] == rep[o])), int((same[ii] & care[ii] & ~pos[ii]).sum()))
    return {"P": tp / max(tp + fp, 1), "R": tp / max(n_pos, 1), "FP": fp, "per": per}


def score_small(rep: np.ndarray, labels: np.ndarray, s: dict) -> dict:
    n = len(rep)
    dup = rep != np.arange(n)
    exact = np.array([dup[i] and s["sha"][i] == s["sha"][rep[i]] for i in range(n)])
    groups: dict[int, set] = {}
    for i in range(n):
        groups.setdefault(int(rep[i]), set()).add(labels[i])
    multi = [r for r in set(rep[dup].tolist())]
    mixed = sum(1 for r in multi if len(groups[r]) > 1)
    largest = max((int((rep == r).sum()) for r in multi), default=0)
    return {"dups": int(dup.sum()), "exact": int(exact.sum()), "groups": len(multi), "mixed": mixed, "largest": largest}


# --------------------------------------------------------------------------- data


def digits(size: int, resample: str) -> tuple[list[bytes], np.ndarray]:
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    out = []
    for im in d.images:
        arr = (im * (255.0 / 16.0)).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr, mode="L").resize((size, size), getattr(Image.Resampling, resample)).convert("RGB").save(buf, "PNG")
        out.append(buf.getvalue())
    return out, d.target.astype(str)


def cifar_files(root: Path, limit: int | None = None) -> tuple[list[bytes], np.ndarray]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:limit]
    return [p.read_bytes() for p in files], np.array([p.parent.name for p in files])


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cifar50k", type=Path, default=None, help="folder of the 50,000 CIFAR-10 training images")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/dsbuild-bench-features"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--time-sample", type=int, default=256)
    ap.add_argument("--views-pass", action="store_true", help="embed as a build does when it also writes the training "
                    "features (Embedder.embed_views: one pass for both); give another --cache")
    ap.add_argument("--sets", default="hard,easy,digits48,digits48nearest,cifar5k")
    ap.add_argument("--embed-decode", type=int, default=None, metavar="PX",
                    help="the short side JPEGs are decoded to for the embeddings (default: the build's, 320; 128: the "
                         "build before 2026-12-02)")
    ap.add_argument("--detail-similarity", default="", help="comma-separated cosines: each adds a rule, the defaults "
                    "with dedup.detail_similarity at that value (beside today's in the same run)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    import planted_hard as ph

    print(f"dsbuild bench/dup_semantic.py — load average {os.getloadavg()[0]:.1f} at start, {args.threads} torch threads, "
          f"defaults: {DEFAULT.embed_arch} @ {DEFAULT.embed_size} px, views {DEFAULT.view_threshold}/{DEFAULT.crop_threshold} "
          f"bits, confirm {list(DEFAULT.confirm)} below {list(DEFAULT.confirm_sides)} px, kNN ≥ {DEFAULT.similarity}")
    sets = args.sets.split(",") + (["cifar50k"] if args.cifar50k else [])
    extra = {f"detail kNN ≥ {v}": dataclasses.replace(DEFAULT, detail_similarity=float(v))
             for v in args.detail_similarity.split(",") if v}
    rules = RULES + tuple(extra)
    timings: dict[str, dict] = {}
    for name in sets:
        t0, c0 = time.perf_counter(), cpu()
        verify = VerifySettings()
        if name in ("hard", "easy", "extra"):
            ps = ph.planted_set(transforms=name, quick=args.quick)
            datas = [it.data for it in ps.items]
            verify = VerifySettings(min_side=1)
        elif name.startswith("digits"):
            datas, labels = digits(48, "NEAREST" if name.endswith("nearest") else "BICUBIC")
            if args.quick:
                datas, labels = datas[:600], labels[:600]
        elif name == "cifar5k":
            datas, labels = cifar_files(ph.CIFAR_DEV / "images", 1000 if args.quick else None)
        else:
            datas, labels = cifar_files(args.cifar50k)
        s = signals(datas, cache_dir=args.cache, threads=args.threads, time_sample=args.time_sample, verify=verify,
                    views_pass=args.views_pass, embed_side=args.embed_decode)
        c1 = cpu()
        reps = run_rules(s, extra)
        s["timing"]["rules, all six (per image)"] = (cpu() - c1) / len(datas)
        timings[name] = s["timing"]
        print(f"\n== {name}: {len(datas)} files — {time.perf_counter() - t0:.0f} s wall, {cpu() - c0:.0f} CPU s, "
              f"load {os.getloadavg()[0]:.1f}")
        if name in ("hard", "easy", "extra"):
            pics, variants = ps.pictures, ps.variants
            truth = ph.truth(ps)
            scores = {r: score_planted(reps[r], pics, variants, truth) for r in rules}
            vs = sorted(set(scores[rules[0]]["per"]))  # copies with their original in the set (none in extra)
            print(f"{'copy (recall / false pairs)':<26}" + "".join(f"{r:>22}" for r in rules))
            for v in vs:
                print(f"{v:<26}" + "".join(f"{scores[r]['per'][v][0]:>15.3f} / {scores[r]['per'][v][1]:<4}" for r in rules))
            print(f"{'pairs P / R':<26}" + "".join(f"{scores[r]['P']:>14.3f} / {scores[r]['R']:.3f}" for r in rules))
            kinds = ps.kinds
            print(f"{'copies grouped, by kind':<26}" + "".join(f"{r:>22}" for r in rules))
            for k in ("photo", "quadrant", "stereo", "cifar256", "cifar32"):
                orig = {p: i for i, (p, v) in enumerate(zip(pics, variants)) if v == "orig"}
                ii = np.array([i for i in range(len(pics)) if kinds[i] == k and variants[i] != "orig" and pics[i] in orig])
                if not len(ii):
                    continue
                o = np.array([orig[pics[i]] for i in ii])
                print(f"{k:<26}" + "".join(f"{float(np.mean(reps[r][ii] == reps[r][o])):>22.3f}" for r in rules))
            orig = {p: i for i, (p, v) in enumerate(zip(pics, variants)) if v == "orig"}
            print(f"{'32-px CIFAR copies, by copy':<26}" + "".join(f"{r:>22}" for r in rules))
            for v in vs:
                ii = np.array([i for i in range(len(pics)) if kinds[i] == "cifar32" and variants[i] == v and pics[i] in orig])
                if len(ii):
                    o = np.array([orig[pics[i]] for i in ii])
                    print(f"{v:<26}" + "".join(f"{float(np.mean(reps[r][ii] == reps[r][o])):>22.3f}" for r in rules))
        else:
            print(f"{'rule':<22}{'near-dup images':>16}{'%':>8}{'exact':>7}{'groups':>8}{'mixed-label groups':>20}{'largest':>9}")
            for r in rules:
                sc = score_small(reps[r], labels, s)
                print(f"{r:<22}{sc['dups']:>16,}{100 * sc['dups'] / len(datas):>8.2f}{sc['exact']:>7}{sc['groups']:>8}"
                      f"{sc['mixed']:>20}{sc['largest']:>9}")
    print("\n== cost per image (CPU ms, this process, all threads)")
    keys = list(next(iter(timings.values())))
    print(f"{'stage':<36}" + "".join(f"{k:>14}" for k in timings))
    for key in keys:
        unit = 1 if "images/s" in key else 1000
        print(f"{key:<36}" + "".join(f"{timings[k][key] * unit:>14.1f}" for k in timings))
    print(f"{'ratio (build + signals) / build':<36}" + "".join(
        f"{(t['build per image (analyze_bytes)'] + t['decode'] + t['phash views + effective side'] + t['embedding']) / t['build per image (analyze_bytes)']:>14.1f}"
        for t in timings.values()))
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

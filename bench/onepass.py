"""Benchmark: one network pass per image for build + train (this checkout) vs two (a baseline commit).

Before: the build embeds every image at 160 px (squash) for its near-duplicate signals, then the first
``train`` runs the network again at 224 px (short side, centre crop) for the head's features. After: the
build's pass also writes the training features of the 160 px squash input, and ``train`` reads them (the
default for a head on the embedding's backbone; ``model.size``/``resize`` set keep the old input).

Two parts, both printed side by side:

1. **whole commands** — ``dsbuild build`` then ``dsbuild train`` on the same images, in a fresh project each,
   with the baseline's code (``git worktree`` of ``--baseline``, default main's ``ef0f46d``) and this checkout's:
   wall seconds and seconds per image of each command, the head's valid accuracy (clean labels), and the
   near-duplicate outcome (images marked duplicate, and whether both runs marked the same ones);
2. **inputs** (``--inputs``) — the network alone on the same images under each preprocessing, round-robin in
   chunks (machine-load drift hits all alike): seconds per image and the 5-fold cross-validated accuracy of the
   default head (view ``stages``; ``--views stages,pool,stages+pool`` for the others).

Data: the CIFAR-10N dev photos (32×32 JPEG, /work/shared/data/cifar10n-dev, clean labels; ``--classes 5`` keeps
bird/cat/deer/dog/horse, as trial 9) and scikit-learn's digits (64 px PNG, as bench/mislabels.py).

    .venv/bin/python bench/onepass.py                 # 1,000 CIFAR photos, 5 classes, whole commands
    .venv/bin/python bench/onepass.py --data digits   # 1,000 digits
    .venv/bin/python bench/onepass.py --inputs        # part 2 instead (CIFAR + digits, 1,000 each)
    .venv/bin/python bench/onepass.py --inputs --aspect  # part 2 on pictures of mixed shapes (two inputs)
Measured 2026-12-02 (``--data photos --quick``: 300 CIFAR photos enlarged to 600–1100 px JPEGs, 5 classes, baseline
e9f5108, load ~3): build 32.9 → 27.1 s, train 19.8 → 12.0 s (its image features 11.0 → 0 s), build + train 1.35×; same
duplicates, valid accuracy 0.667 → 0.683 (one image of 60). Two runs before it under heavier load had the first command
pair stretched by the other jobs (build 328.6 / 48.5 s first, 38.1 / 32.4 s second); train's features were 23.0 / 27.0 s
→ 0 in both. ``--draft`` (108 scikit-image photo crops, 151–5320 px): views cosine to a full decode's min 0.9768 at the
hash's 128 px decode, 0.9936 at 160, 0.9988 at 320 (CPU ms per decode 3.8 / 5.2 / 6.5; full 14.3).

    .venv/bin/python bench/onepass.py --quick         # 300 images
    .venv/bin/python bench/onepass.py --data photos --baseline e9f5108   # web-photo sized JPEGs (one pass for them too)
    .venv/bin/python bench/onepass.py --draft         # part 3: views of reduced JPEG decodes vs a full decode's
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CIFAR = ROOT.parents[1] / "shared" / "data" / "cifar10n-dev"
if not CIFAR.is_dir():
    CIFAR = Path("/work/shared/data/cifar10n-dev")
FIVE = ("bird", "cat", "deer", "dog", "horse")


# --------------------------------------------------------------------------- data


def cifar(n: int, classes: int, seed: int = 9) -> list[tuple[str, str, object]]:
    """``(name, label, PIL image)`` of ``n`` CIFAR-10N dev photos (clean labels)."""
    from PIL import Image

    rows = list(csv.DictReader(open(CIFAR / "labels.csv")))
    if classes == 5:
        rows = [r for r in rows if r["clean_label"] in FIVE]
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(rows), min(n, len(rows)), replace=False))
    return [(Path(rows[i]["file"]).name, rows[i]["clean_label"], Image.open(CIFAR / rows[i]["file"])) for i in pick]


def photos(n: int, classes: int, seed: int = 9) -> list[tuple[str, str, object]]:
    """``(name, label, PIL image)``: the CIFAR photos of :func:`cifar` enlarged (bicubic) to a random short side of
    600–1100 px, saved as JPEG q 90 by :func:`project` — files of a web photo's size (a large JPEG, which the build
    decodes reduced), their content still the 32 px photo's."""
    from PIL import Image

    rng = np.random.default_rng(seed + 1)
    out = []
    for name, label, img in cifar(n, classes, seed):
        side = int(rng.integers(600, 1101))
        aspect = float(rng.uniform(0.75, 1.33))
        out.append((name, label, img.convert("RGB").resize((round(side * max(1.0, aspect)), round(side * max(1.0, 1 / aspect))),
                                                           Image.Resampling.BICUBIC)))
    return out


def draft(args: argparse.Namespace) -> None:
    """Part 3 (``--draft``): the training-feature views of a reduced JPEG decode against a full decode's (what
    ``train`` and ``predict`` read), per short side the decode keeps — the build's hash decode (128 px), and 160 / 320
    — on crops of scikit-image's photos (12 per photo, 50–100 % of it, enlarged ×1–4, JPEG q 75–95)."""
    import io

    from PIL import Image
    from skimage import data as skd

    from dsbuild.model.embeddings import Embedder, FeatureSpec
    from dsbuild.verify.decode import decode
    from dsbuild.verify.settings import VerifySettings

    rng = np.random.default_rng(0)
    blobs = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
                 "colorwheel", "cat"):
        a = getattr(skd, name)()
        a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
        im = Image.fromarray(a.astype(np.uint8))
        for _ in range(12):
            w, h = im.size
            s = rng.uniform(0.5, 1.0)
            cw, ch = int(w * s), min(h, int(h * s * rng.uniform(0.7, 1.3)))
            x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            c = im.crop((x, y, x + cw, y + ch))
            f = rng.choice([1.0, 1.5, 2.5, 4.0])
            c = c.resize((int(c.width * f), int(c.height * f)), Image.Resampling.LANCZOS)
            b = io.BytesIO()
            c.save(b, "JPEG", quality=int(rng.integers(75, 96)))
            blobs.append(b.getvalue())
    sides = [min(Image.open(io.BytesIO(b)).size) for b in blobs]
    print(f"{len(blobs)} photo JPEGs, short side {min(sides)}–{max(sides)} px (median {int(np.median(sides))})")
    emb = Embedder(FeatureSpec(arch="efficientnet_lite0", size=160, resize="squash"), threads=args.threads, views=True)

    def views(imgs):
        out = []
        for i in range(0, len(imgs), 32):
            _, v = emb.embed_views(imgs[i:i + 32])
            out.append(np.concatenate([v[k] for k in sorted(v)], 1))
        x = np.concatenate(out)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    vs = VerifySettings()
    t0 = time.process_time()
    full = [decode(b, vs, analysis_side=None)[0] for b in blobs]
    tf = (time.process_time() - t0) / len(blobs)
    ref = views(full)
    print(f"\n| decode | CPU ms/image | reduced | views cosine to a full decode's: min | p1 | p50 |\n|---|---|---|---|---|---|")
    print(f"| full (train, predict) | {tf * 1e3:.1f} | 0% | 1 | 1 | 1 |")
    for side in (128, 160, 320):
        t0 = time.process_time()
        imgs = [decode(b, vs, analysis_side=side)[0] for b in blobs]
        t = (time.process_time() - t0) / len(blobs)
        cos = (views(imgs) * ref).sum(1)
        red = np.mean([min(i.size) < min(f.size) for i, f in zip(imgs, full)])
        print(f"| draft ≥ {side} px | {t * 1e3:.1f} | {red:.0%} | {cos.min():.4f} | {np.percentile(cos, 1):.4f} | "
              f"{np.median(cos):.4f} |")


def digits(n: int, seed: int = 9) -> list[tuple[str, str, object]]:
    """``(name, label, PIL image)`` of ``n`` real digits rendered at 64 px (bench/mislabels.py's rendering)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(d.target), min(n, len(d.target)), replace=False))
    out = []
    for i in pick:
        arr = (255 - d.images[i] * (255.0 / 16.0)).clip(0, 255).astype("uint8")
        img = Image.fromarray(arr, mode="L").resize((64, 64), Image.Resampling.BICUBIC).convert("RGB")
        out.append((f"d{i:04d}.png", f"n{d.target[i]}", img))
    return out


# --------------------------------------------------------------------------- part 1: whole commands


def checkout(commit: str, where: Path) -> Path:
    """A worktree of ``commit`` at ``where`` (made once)."""
    if not (where / "dsbuild").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), commit], check=True,
                       capture_output=True)
    return where


def run(code: Path, project: Path, *args: str) -> tuple[float, str]:
    """``dsbuild ARGS`` with the dsbuild of ``code`` (this interpreter's packages), niced; (wall s, output)."""
    boot = (f"import sys; sys.path.insert(0, {str(code)!r}); import dsbuild; "
            f"assert dsbuild.__file__.startswith({str(code)!r}), dsbuild.__file__; "
            "from dsbuild.cli import main; sys.exit(main())")
    t = time.perf_counter()
    out = subprocess.run(["nice", "-n", "10", sys.executable, "-c", boot, "-m", str(project / "datasets.toml"), *args],
                         cwd=project, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    wall = time.perf_counter() - t
    if out.returncode not in (0, 3):
        raise SystemExit(f"{code}: dsbuild {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return wall, out.stdout + out.stderr


def project(root: Path, images: list[tuple[str, str, object]]) -> Path:
    """A project with ``images`` in class folders and the default settings."""
    labels = sorted({lab for _, lab, _ in images})
    for name, lab, img in images:
        folder = root / "data" / lab
        folder.mkdir(parents=True, exist_ok=True)
        if name.endswith(".jpg") and getattr(img, "filename", ""):
            shutil.copyfile(img.filename, folder / name)  # the original JPEG bytes
        elif name.endswith(".jpg"):
            img.save(folder / name, quality=90)
        else:
            img.save(folder / name)
    classes = "\n".join(f'{lab} = {{ folders = "data/{lab}" }}' for lab in labels)
    (root / "datasets.toml").write_text(f'catalog = "catalog/dsbuild.duckdb"\n\n[datasets.bench.classes]\n{classes}\n')
    return root


def outcome(proj: Path) -> dict:
    import duckdb

    with duckdb.connect(str(proj / "catalog" / "dsbuild.duckdb"), read_only=True) as con:
        dups = {r[0] for r in con.execute("select origin from images where status = 'duplicate'").fetchall()}
        outl = con.execute("select count(*) from images where outlier").fetchone()[0] \
            if "outlier" in [c[0] for c in con.execute("describe images").fetchall()] else None
        acc = con.execute("select accuracy, duration_s, params from runs where kind = 'train' and status = 'ok' "
                          "order by started_at desc limit 1").fetchone()
    import json

    params = json.loads(acc[2]) if acc and isinstance(acc[2], str) else (acc[2] if acc else {})
    return {"dups": {Path(d).name for d in dups}, "outliers": outl, "accuracy": acc[0] if acc else None,
            "features": (params or {}).get("features")}


def stage_seconds(text: str, stage: str) -> str:
    """The seconds a build's summary gives a stage (best effort: '' when the line is not there)."""
    import re

    for line in text.splitlines():
        if stage in line:
            m = re.search(r"([0-9]+(?:\.[0-9]+)?) ?s\b", line)
            if m:
                return m.group(1)
    return ""


def whole(args: argparse.Namespace) -> None:
    images = {"cifar": lambda: cifar(args.n, args.classes), "photos": lambda: photos(args.n, args.classes),
              "digits": lambda: digits(args.n)}[args.data]()
    work = Path(tempfile.mkdtemp(prefix="onepass-", dir=args.tmp))
    old = checkout(args.baseline, args.tmp / f"baseline-{args.baseline[:10]}")
    print(f"{len(images)} {args.data} images, {len({lab for _, lab, _ in images})} classes; baseline {args.baseline} "
          f"({old}), new = this checkout ({ROOT}); projects under {work}", flush=True)
    res = {}
    for name, code in (("before", old), ("after", ROOT)) if not args.reverse else (("after", ROOT), ("before", old)):
        proj = project(work / name, images)
        tb, out_b = run(code, proj, "build")
        tt, out_t = run(code, proj, "train", "bench")
        import re

        feat = re.search(r"of which ([0-9.]+) s image features", out_t)
        res[name] = {"build": tb, "train": tt, "feature_s": float(feat.group(1)) if feat else 0.0, **outcome(proj)}
        print(f"  {name}: build {tb:.1f} s, train {tt:.1f} s", flush=True)
    n = len(images)
    b, a = res["before"], res["after"]
    print(f"\n| | before ({args.baseline[:7]}) | after (one pass) | ratio |\n|---|---|---|---|")
    for key in ("build", "train"):
        print(f"| `{key}` wall s (s/image) | {b[key]:.1f} ({b[key] / n:.3f}) | {a[key]:.1f} ({a[key] / n:.3f}) | "
              f"{b[key] / a[key]:.2f}× |")
    tb, ta = b["build"] + b["train"], a["build"] + a["train"]
    print(f"| build + train wall s (s/image) | {tb:.1f} ({tb / n:.3f}) | {ta:.1f} ({ta / n:.3f}) | {tb / ta:.2f}× |")
    print(f"| train features | {b['features']} | {a['features']} | |")
    print(f"| of `train`: computing image features, s | {b['feature_s']:.1f} | {a['feature_s']:.1f} | |")
    print(f"| valid accuracy (clean labels) | {b['accuracy']:.4f} | {a['accuracy']:.4f} | "
          f"{100 * (a['accuracy'] - b['accuracy']):+.1f} pts |")
    print(f"| images marked duplicate | {len(b['dups'])} | {len(a['dups'])} | same set: {b['dups'] == a['dups']} |")
    print(f"| outliers | {b['outliers']} | {a['outliers']} | |")


# --------------------------------------------------------------------------- part 2: the network alone


def inputs(args: argparse.Namespace) -> None:
    import torch

    from dsbuild.model.features import frozen_body, to_input, view_matrix
    from dsbuild.model.head import choose_c, fit_head, stratified_folds

    torch.set_num_threads(args.threads)
    body, _ = frozen_body("efficientnet_lite0", 224)
    configs = {"224 crop (train before)": (224, "crop"), "160 squash (build; train after)": (160, "squash"),
               "224 squash": (224, "squash"), "160 crop": (160, "crop")}
    if args.aspect:  # the question is squash vs crop on non-square pictures: the two defaults only
        configs = {k: v for k, v in configs.items() if k.startswith(("224 crop", "160 squash"))}
    for data in args.sets.split(","):
        images = cifar(args.n, args.classes) if data == "cifar" else digits(args.n)
        pics = [im.convert("RGB") for _, _, im in images]
        if args.aspect:  # photos of mixed shapes: a centred crop of a random aspect ratio (log-uniform in [1/2, 2])
            rng = np.random.default_rng(7)
            shaped = []
            for p in pics:
                a = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
                w, h = p.size
                cw, ch = (w, max(1, round(h / a))) if a >= 1 else (max(1, round(w * a)), h)
                left, top = (w - cw) // 2, (h - ch) // 2
                shaped.append(p.crop((left, top, left + cw, top + ch)))
            pics = shaped
        labels = sorted({lab for _, lab, _ in images})
        y = np.array([labels.index(lab) for _, lab, _ in images])
        secs = dict.fromkeys(configs, 0.0)
        feats: dict[str, dict[str, list]] = {c: {} for c in configs}
        for s in range(0, len(pics), 100):
            for c, (size, resize) in configs.items():
                t = time.perf_counter()
                x = torch.from_numpy(np.stack([to_input(p, size, resize) for p in pics[s:s + 100]])).permute(0, 3, 1, 2)
                with torch.inference_mode():
                    for b in range(0, len(x), 32):
                        for k, v in body(x[b:b + 32].float()).items():
                            feats[c].setdefault(k, []).append(v.numpy())
                secs[c] += time.perf_counter() - t
        folds = stratified_folds(y, 5, 42)
        print(f"\n{data}: {len(y)} images, {len(labels)} classes — s/image and 5-fold CV accuracy of the head")
        views = args.views.split(",")
        print("| input | s/image | " + " | ".join(views) + " |\n|---|---|" + "---|" * len(views))
        for c in configs:
            f = {k: np.concatenate(v) for k, v in feats[c].items()}
            accs = []
            for view in views:
                X = view_matrix(f, view).astype(np.float64)
                C, _ = choose_c(X, y, len(labels), seed=42)
                pred = np.zeros(len(y), dtype=int)
                for test in folds:
                    train = np.setdiff1d(np.arange(len(y)), test)
                    pred[test] = fit_head(X[train], y[train], len(labels), C, seed=42).predict_proba(X[test]).argmax(1)
                accs.append(float((pred == y).mean()))
            print(f"| {c} | {secs[c] / len(y):.4f} | " + " | ".join(f"{a:.4f}" for a in accs) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="300 images")
    ap.add_argument("--data", choices=("cifar", "photos", "digits"), default="cifar",
                    help="photos: the CIFAR photos enlarged to 600–1100 px JPEGs (web-photo sized files)")
    ap.add_argument("--draft", action="store_true", help="part 3: views of reduced JPEG decodes vs a full decode's")
    ap.add_argument("--classes", type=int, choices=(5, 10), default=5)
    ap.add_argument("--baseline", default="ef0f46d")
    ap.add_argument("--reverse", action="store_true", help="run this checkout first")
    ap.add_argument("--inputs", action="store_true", help="part 2: the network alone under each preprocessing")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--aspect", action="store_true", help="--inputs: crop each picture to a random aspect ratio "
                    "(1/2 to 2, centred) first — squash vs crop on pictures that are not square")
    ap.add_argument("--views", default="stages", help="--inputs: the head's feature views to score (stages = the "
                                                          "default; also pool, stages+pool)")
    ap.add_argument("--sets", default="cifar,digits", help="--inputs: cifar, digits")
    ap.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()) / "dsbuild-bench-onepass")
    args = ap.parse_args()
    if args.quick:
        args.n = 300
    args.tmp.mkdir(parents=True, exist_ok=True)
    draft(args) if args.draft else inputs(args) if args.inputs else whole(args)


if __name__ == "__main__":
    main()

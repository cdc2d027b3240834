"""Benchmark: how far the mislabel run's trust figures are from the truth, old rule beside new, per regime.

The trust line of ``dsbuild mislabels`` says how many flags are expected to be real label errors and how many
wrong labels there are in all (:func:`dsbuild.model.trust.trust_estimate`, no ground truth). Here the truth is
known, and for each regime the script prints the flags' measured precision and the true number of wrong labels
beside

* **old** — the label posterior alone (cleanlab's noise matrix, ``N⁻¹ q``, Bayes with the annotator): what
  dsbuild said before (trial 9: "about 192 (63 %)" of 307 flags; measured 45 %);
* **new** — the point estimate and the two estimates it is the middle of (no bounds): the posterior scaled to
  cleanlab's noise rate and to the anchor-point noise rate (:func:`dsbuild.model.trust.anchor_noise_rate`).

The two estimates are no bounds. Measured 2026-12-02 (cold cache, 257 s, load ~2.5): the measured precision lies
between them in 5 of the 15 regimes — CIFAR 4 of 6 (not ``clean``, 0.00 below 0.18–0.36, nor ``sym20``, 0.49
below 0.59–0.67), digits 1 of 5 (``clean``; the two are one number there, and the truth 0.01–0.11 off it), GPU 0 of
4 (all under-estimated, by up to 0.51); mean |error| of the point estimate 0.173 (the posterior alone) → 0.136.

Regimes (flags: :func:`dsbuild.model.trust.flag_label_issues`, as ``mislabels`` flags them):

``cifar5`` — dsbuild's own out-of-fold probabilities (the default recipe: logistic heads on the frozen
    efficientnet_lite0's features, 5 folds, 2 rounds) on 1,000 CIFAR-10N dev photos of 32 px, 5 classes (bird,
    cat, deer, dog, horse): fresh-user trial 9's setup, a weak model (56–74 % out of fold). Label sets:
    ``random1`` (trial 9's annotator; 64 of the wrong labels show a class outside the five), ``aggre``,
    ``worse``, ``random2``, ``clean`` (no wrong label), ``sym20`` (the clean labels with 20 % planted flips);
    each keeps the photos whose label is one of the five.
``digits`` — dsbuild's own out-of-fold probabilities on 600 real handwritten digits (``load_digits``, 64 px,
    10 classes) with planted noise: ``sym10``, ``sym20``, ``sym40`` (flips to a random other class),
    ``pair20`` (1↔7, 3↔8, 4↔9), ``clean``: a strong model.
``gpu`` — the published out-of-fold probabilities of cleanlab's benchmark (ResNet-18 and Swin-B, 100 epochs on a
    GPU) for the 5,000 CIFAR-10N dev images, ``worst`` and ``aggre`` labels: strong, confident models on real
    annotator noise.

Data: ``../shared/data/cifar10n-dev/`` (benchmark data only, never shipped); features are cached under
``--cache`` (the first run extracts them: ~3–5 min for the photos, ~1–2 min for the digits on 2 cores).

    .venv/bin/python bench/trust_calibration.py                  # all three (~10 min cold, ~5 min cached)
    .venv/bin/python bench/trust_calibration.py --only gpu,digits
    .venv/bin/python bench/trust_calibration.py --files /work/tmp/trial9/truth.csv   # trial 9's exact photos
    .venv/bin/python bench/trust_calibration.py --reviewed 10,20,50    # and the rest after a review of the top flags

``--reviewed M,…``: a person reviews the M flags with the lowest label quality (the app's queue order) and decides
each rightly (the truth). Printed per regime and M: the measured share of wrong labels among the reviewed flags and
among the rest, the rest's estimate as it stands (:func:`~dsbuild.model.trust.trust_estimate`'s point estimate of
each flag), and the rest's estimate scaled by the reviewed flags' measured / estimated ratio (a calibration on the
people's decisions, capped at 1 per flag) — and the mean |error| of the two over the regimes. Measured 2026-12-02
(load 7–10): mean |error| of the rest's precision, as it stands → scaled: M 10 0.148 → 0.147, M 20 0.147 → 0.138,
M 50 0.149 → 0.136 over 14 regimes; the scaling is exact on clean labels (0.24 → 0.00: nothing reviewed was
wrong) and worse on CIFAR random1/random2 at M 10–20 (+0.09…+0.21 where the estimate as it stands is off by
+0.02…+0.06: the top flags are wrong labels more often than their estimate, the rest less). The 20 flags with the
lowest label quality were wrong labels 0–54 points more often than the rest (gpu aggre swin 1.00 vs 0.94, CIFAR
sym20 1.00 vs 0.46). Not taken: ``mislabels`` shows the people's verdict as measured, beside the estimate
(:func:`dsbuild.cycle.review_tally`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dsbuild.model.trust import flag_label_issues, label_posterior, trust_estimate  # noqa: E402

#: ``shared/data/cifar10n-dev`` beside the checkout, or beside a folder above it (a worktree under /work/wt/NAME).
DATA = next((d / "shared" / "data" / "cifar10n-dev" for d in Path(__file__).resolve().parents[1:]
             if (d / "shared" / "data" / "cifar10n-dev").is_dir()),
            Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10n-dev")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FIVE = ("bird", "cat", "deer", "dog", "horse")


REVIEWED: tuple[int, ...] = ()
"""``--reviewed``: numbers of top flags a person reviews (module docstring)."""


def flag_estimates(labels: np.ndarray, probs: np.ndarray, post: np.ndarray) -> np.ndarray:
    """Each image's point-estimate chance that its label is wrong, the per-image terms whose flagged sum is
    :func:`trust_estimate`'s ``expected_right``: (n,) float."""
    total = trust_estimate(labels, post, np.ones(len(labels), dtype=bool), pred_probs=probs)
    p_wrong = 1.0 - post[np.arange(len(labels)), labels]
    return p_wrong * (total.expected_wrong_labels / p_wrong.sum()) if p_wrong.sum() > 0 else p_wrong


def reviewed(labels: np.ndarray, probs: np.ndarray, post: np.ndarray, flags: np.ndarray, wrong: np.ndarray) -> dict:
    """Per M of :data:`REVIEWED` (fewer than the flags): ``(top, rest, as it stands, scaled)`` shares of wrong labels
    (module docstring)."""
    est = flag_estimates(labels, probs, post)
    idx = np.flatnonzero(flags)
    idx = idx[np.argsort(probs[idx, labels[idx]], kind="stable")]  # lowest label quality first
    out = {}
    for m in REVIEWED:
        if m >= len(idx):
            continue
        top, rest = idx[:m], idx[m:]
        ratio = wrong[top].sum() / est[top].sum() if est[top].sum() > 0 else 1.0
        out[m] = (float(wrong[top].mean()), float(wrong[rest].mean()), float(est[rest].mean()),
                  float(np.minimum(1.0, ratio * est[rest]).mean()))
    return out


def measure(name: str, labels: np.ndarray, probs: np.ndarray, true: np.ndarray) -> dict:
    """Old and new trust figures of the flags on ``probs`` against the truth (``true``: -1 = a class outside)."""
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(1, keepdims=True)
    flags = flag_label_issues(labels, probs)
    wrong = labels != true
    post = label_posterior(labels, probs)
    old = trust_estimate(labels, post, flags)
    new = trust_estimate(labels, post, flags, pred_probs=probs)
    n = int(flags.sum())
    return dict(regime=name, n=len(labels), acc=float((probs.argmax(1) == labels).mean()), flags=n,
                reviewed=reviewed(labels, probs, post, flags, wrong),
                precision=float((flags & wrong).sum() / n) if n else float("nan"), wrong=int(wrong.sum()),
                old_p=old.expected_precision, new_p=new.expected_precision, lo_p=new.expected_precision_low,
                hi_p=new.expected_precision_high, old_w=old.expected_wrong_labels, new_w=new.expected_wrong_labels,
                lo_w=new.expected_wrong_labels_low, hi_w=new.expected_wrong_labels_high)


def oof(df: pd.DataFrame, cache: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """dsbuild's default out-of-fold probabilities (``mislabels``' recipe) for ``df`` (image_id, path, label)."""
    from dsbuild.model.oof import out_of_fold_probs
    from dsbuild.model.settings import ModelSettings

    res = out_of_fold_probs(df, ModelSettings(arch="efficientnet_lite0"), cache_dir=cache)
    return np.asarray(res.pred_probs, dtype=np.float64), res.label_index(), res.classes


def cifar5(cache: Path, files: Path | None, n: int) -> list[dict]:
    lab = pd.read_csv(DATA / "labels.csv")
    lab["name"] = lab["file"].map(lambda f: Path(f).name)
    if files is not None:
        lab = lab[lab["name"].isin(set(pd.read_csv(files)["file"].map(lambda f: Path(f).name)))]
    else:
        eligible = lab[lab["random_label1"].isin(FIVE)]
        lab = eligible.iloc[np.sort(np.random.default_rng(9).choice(len(eligible), size=min(n, len(eligible)),
                                                                     replace=False))]
    lab = lab.reset_index(drop=True)
    base = pd.DataFrame({"image_id": lab["name"], "path": [str(DATA / f) for f in lab["file"]]})
    rng = np.random.default_rng(9)
    sym = lab["clean_label"].to_numpy(dtype=object).copy()
    inside = np.flatnonzero(lab["clean_label"].isin(FIVE).to_numpy())
    for i in rng.choice(inside, size=int(0.2 * len(inside)), replace=False):
        sym[i] = rng.choice([c for c in FIVE if c != sym[i]])
    sets = {name: lab[col].to_numpy(dtype=object) for name, col in
            (("random1", "random_label1"), ("aggre", "aggre_label"), ("worse", "worse_label"),
             ("random2", "random_label2"), ("clean", "clean_label"))}
    sets["sym20"] = sym
    rows = []
    for name, labels in sets.items():
        keep = pd.Series(labels).isin(FIVE).to_numpy()
        probs, y, classes = oof(base[keep].assign(label=labels[keep]).reset_index(drop=True), cache)
        true = np.array([classes.index(c) if c in classes else -1 for c in lab["clean_label"][keep]])
        rows.append(measure(f"cifar5 {name}", y, probs, true))
        print(f"  {rows[-1]['regime']} done", file=sys.stderr, flush=True)
    return rows


def digits(cache: Path) -> list[dict]:
    from model_data import digit_table

    df = digit_table(cache / "digits-png", per_class=60, valid=0.2)
    true = df["label"].to_numpy(dtype=object)
    classes = sorted(df["label"].unique())
    rng = np.random.default_rng(0)

    def sym(frac: float) -> np.ndarray:
        lab = true.copy()
        for i in rng.choice(len(lab), int(frac * len(lab)), replace=False):
            lab[i] = rng.choice([c for c in classes if c != lab[i]])
        return lab

    def pair(frac: float) -> np.ndarray:
        lab = true.copy()
        for a, b in (("1", "7"), ("3", "8"), ("4", "9")):
            for x, y in ((a, b), (b, a)):
                idx = np.flatnonzero(true == x)
                lab[rng.choice(idx, int(frac * len(idx)), replace=False)] = y
        return lab

    rows = []
    for name, lab in (("clean", true), ("sym10", sym(0.1)), ("sym20", sym(0.2)), ("pair20", pair(0.2)),
                      ("sym40", sym(0.4))):
        probs, y, cls = oof(df.assign(label=lab), cache / "features")
        rows.append(measure(f"digits {name}", y, probs, np.array([cls.index(c) for c in true])))
        print(f"  {rows[-1]['regime']} done", file=sys.stderr, flush=True)
    return rows


def gpu() -> list[dict]:
    lab = pd.read_csv(DATA / "labels.csv")
    index = {c: i for i, c in enumerate(CLASSES)}
    true = lab["clean_label"].map(index).to_numpy()
    rows = []
    for noise, col in (("worst", "worse_label"), ("aggre", "aggre_label")):
        given = lab[col].map(index).to_numpy()
        for model in ("resnet18", "swin"):
            probs = np.load(DATA / f"pred_probs_{noise}_{model}.npy")
            rows.append(measure(f"gpu {noise} {model}", given, probs, true))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="cifar5,digits,gpu", help="comma list of cifar5, digits, gpu")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dsbuild-bench-trust",
                    help="feature cache and rendered digits (kept between runs)")
    ap.add_argument("--files", type=Path, default=None,
                    help="cifar5: a CSV with a 'file' column naming the photos (default: 1,000 drawn with seed 9)")
    ap.add_argument("--n", type=int, default=1000, help="cifar5: photos drawn when --files is not given")
    ap.add_argument("--reviewed", default="", help="comma list of M: the rest after a review of the top M flags")
    args = ap.parse_args()
    global REVIEWED
    REVIEWED = tuple(int(m) for m in args.reviewed.split(",") if m)
    only = set(args.only.split(","))
    t0 = time.perf_counter()
    rows = []
    if "cifar5" in only:
        rows += cifar5(args.cache / "features", args.files, args.n)
    if "digits" in only:
        rows += digits(args.cache)
    if "gpu" in only:
        rows += gpu()
    print("precision of the flags: measured, old estimate, new estimate [its two estimates: low–high]; wrong labels "
          "in all: the same\n")
    print(f"{'regime':22s} {'n':>5s} {'acc':>5s} {'flags':>5s} | {'P true':>6s} {'old':>5s} {'new':>5s} "
          f"{'low–high':>11s} | {'W true':>6s} {'old':>5s} {'new':>5s} {'low–high':>11s}")
    for r in rows:
        print(f"{r['regime']:22s} {r['n']:5d} {r['acc']:5.2f} {r['flags']:5d} | {r['precision']:6.2f} "
              f"{r['old_p']:5.2f} {r['new_p']:5.2f} {r['lo_p']:5.2f}–{r['hi_p']:4.2f} | {r['wrong']:6d} "
              f"{r['old_w']:5.0f} {r['new_w']:5.0f} {r['lo_w']:5.0f}–{r['hi_w']:<5.0f}")
    print("\n|estimated − measured precision| per family: mean (max), old → new")
    for fam in ("cifar5", "digits", "gpu", ""):
        sel = [r for r in rows if r["regime"].startswith(fam) and r["flags"] > 0 and r["precision"] == r["precision"]]
        if not sel:
            continue
        old = np.abs([r["old_p"] - r["precision"] for r in sel])
        new = np.abs([r["new_p"] - r["precision"] for r in sel])
        inside = sum(r["lo_p"] - 1e-9 <= r["precision"] <= r["hi_p"] + 1e-9 for r in sel)
        print(f"  {fam or 'all':8s} {old.mean():.3f} ({old.max():.2f}) → {new.mean():.3f} ({new.max():.2f}); "
              f"measured between the two estimates in {inside} of {len(sel)}")
    if REVIEWED:
        print("\nafter a review of the M flags with the lowest label quality: share of wrong labels among them, "
              "among the rest, the rest's estimate as it stands, and scaled by the reviewed flags' measured/estimated\n")
        print(f"{'regime':22s} " + " | ".join(f"M {m:<3d} top  rest stands scaled" for m in REVIEWED))
        errs: dict[int, list] = {m: [] for m in REVIEWED}
        for r in rows:
            cells = []
            for m in REVIEWED:
                if m not in r["reviewed"]:
                    cells.append(" " * 27)
                    continue
                top, rest, stands, scaled = r["reviewed"][m]
                errs[m].append((abs(stands - rest), abs(scaled - rest)))
                cells.append(f"{top:9.2f} {rest:5.2f} {stands:6.2f} {scaled:6.2f}")
            print(f"{r['regime']:22s} " + " | ".join(cells))
        for m, e in errs.items():
            if e:
                a = np.asarray(e)
                print(f"  M {m}: mean |error| of the rest's share over {len(a)} regimes: as it stands "
                      f"{a[:, 0].mean():.3f}, scaled {a[:, 1].mean():.3f}")
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

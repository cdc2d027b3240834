"""The mislabel run's trust figures (:func:`dsbuild.model.trust.trust_estimate`) against the truth, and the line
that shows them (:func:`dsbuild.cycle.trust_line`).

Real data: the digits of test_mislabels (a strong model: the estimate must stay where it was) and, where the
benchmark data is on this machine (``shared/data/cifar10n-dev``, the CIFAR-10N dev photos), fresh-user trial 9's
regime: 1,000 photos of 32 px, 5 classes, one annotator's labels, dsbuild's default out-of-fold heads — a weak
model, on which the label posterior alone said 63 % of the flags were real label errors and 45 % were.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dsbuild.cycle import trust_line
from dsbuild.model.trust import (MODEL_MISTAKE_CAUTION, anchor_noise_rate, flag_label_issues, label_posterior,
                                 trust_estimate)

DATA = next((d / "shared" / "data" / "cifar10n-dev" for d in Path(__file__).resolve().parents
             if (d / "shared" / "data" / "cifar10n-dev" / "labels.csv").is_file()), None)
FIVE = ("bird", "cat", "deer", "dog", "horse")


def test_anchor_noise_rate_reads_each_classes_most_confident_predictions() -> None:
    # Class 0 is predicted for 10 images (confidence 0.99, 0.98, …), class 1 for 5 (0.95, 0.94, …). The anchors are
    # the top 20 %, rounded up: 2 of class 0's and 1 of class 1's. Of those three, one label disagrees.
    conf0 = np.linspace(0.99, 0.90, 10)
    conf1 = np.linspace(0.95, 0.91, 5)
    probs = np.concatenate([np.c_[conf0, 1 - conf0], np.c_[1 - conf1, conf1]])
    labels = np.array([0, 1] + [1] * 8 + [1, 0, 0, 0, 0])  # the 2nd anchor of class 0 says 1; all below it: noise
    assert anchor_noise_rate(labels, probs) == pytest.approx(1 / 3)
    assert anchor_noise_rate(labels, probs, fraction=0.5) == pytest.approx(6 / 8)  # 5 + 3 anchors: 4 + 2 disagree


RECORDED_BEFORE_THE_RANGE = {"oof_accuracy": 0.62, "n_flagged": 307, "expected_right": 192.4,
                             "expected_wrong_labels": 236.6}
# Trial 9's first mislabel run (its out-of-fold probabilities recomputed from its catalog): 138 of the 307 flags
# are real label errors (45 %), 200 labels are wrong.
WEAK = {"oof_accuracy": 0.62, "n_flagged": 307, "expected_right": 148.5, "expected_right_low": 104.6,
        "expected_right_high": 192.4, "expected_wrong_labels": 182.7, "expected_wrong_labels_low": 128.7,
        "expected_wrong_labels_high": 236.7, "model_mistake_rate": 0.143}
STRONG = {"oof_accuracy": 0.778, "n_flagged": 133, "expected_right": 107.6, "expected_right_low": 107.6,
          "expected_right_high": 107.6, "expected_wrong_labels": 111.2, "expected_wrong_labels_low": 111.2,
          "expected_wrong_labels_high": 111.2, "model_mistake_rate": 0.037}


def test_trust_line_names_its_two_estimates_not_a_range_and_cautions_when_the_model_errs_often() -> None:
    """The line said "range 34%–63%", but the two figures are estimates, not bounds: on the trust benchmark the
    measured truth lies between them in 5 of 15 regimes. It names each and what it rests on."""
    assert trust_line(WEAK) == (
        "out-of-fold accuracy 62.0% against the given labels; of 307 flags roughly 148 (48%) are expected to be real "
        "label errors, the middle of two estimates (neither a bound): 105 (34%) from the noise among the model's "
        "surest predictions, 192 (63%) from cleanlab's noise matrix; roughly 183 wrong labels in all (the two: 129 "
        "and 237) — caution: the model itself seems wrong on 14% or more of the images, and its mistakes look like "
        "label errors: fewer flags may be real; review the lowest label_quality first")
    assert "range" not in trust_line(WEAK)
    # A strong model: its two estimates are one number, no caution.
    assert trust_line(STRONG) == (
        "out-of-fold accuracy 77.8% against the given labels; of 133 flags roughly 108 (81%) are expected to be real "
        "label errors; roughly 111 wrong labels in all")
    # A run recorded before the two estimates keeps its old words (its figure is the posterior's, the high one).
    assert trust_line(RECORDED_BEFORE_THE_RANGE) == (
        "out-of-fold accuracy 62.0% against the given labels; of 307 flags about 192 (63%) are expected to be real "
        "label errors; about 237 wrong labels estimated in all")


@pytest.mark.slow
@pytest.mark.skipif(DATA is None, reason="benchmark data shared/data/cifar10n-dev is not on this machine")
def test_weak_model_on_real_photos_no_longer_overstates(tmp_path: Path) -> None:
    """Trial 9's regime (at 64 px, for time: the same 62 %-accurate model as at 224): the label posterior alone
    overstates; the new point estimate lands within the band of the truth and the line cautions."""
    from dsbuild.model.oof import out_of_fold_probs
    from dsbuild.model.settings import ModelSettings

    lab = pd.read_csv(DATA / "labels.csv")
    eligible = lab[lab["random_label1"].isin(FIVE)]
    sel = eligible.iloc[np.sort(np.random.default_rng(9).choice(len(eligible), 1000, replace=False))]
    df = pd.DataFrame({"image_id": sel["file"].to_numpy(), "path": [str(DATA / f) for f in sel["file"]],
                       "label": sel["random_label1"].to_numpy()})
    oof = out_of_fold_probs(df, ModelSettings(arch="efficientnet_lite0", size=64), cache_dir=tmp_path / "features")
    probs = np.asarray(oof.pred_probs, dtype=np.float64)
    labels = oof.label_index()
    true = np.array([oof.classes.index(c) if c in oof.classes else -1 for c in sel["clean_label"]])
    wrong = labels != true
    flags = flag_label_issues(labels, probs)
    measured = (flags & wrong).sum() / flags.sum()
    post = label_posterior(labels, probs)
    old = trust_estimate(labels, post, flags)
    new = trust_estimate(labels, post, flags, pred_probs=probs)
    print(f"{flags.sum()} flags, measured precision {measured:.3f}, old {old.expected_precision:.3f}, new "
          f"{new.expected_precision:.3f} [{new.expected_precision_low:.3f}, {new.expected_precision_high:.3f}]; "
          f"wrong {wrong.sum()}, old {old.expected_wrong_labels:.0f}, new {new.expected_wrong_labels:.0f}")
    # Measured here: 313 flags, 37 % real; the posterior alone said 64 % and 239 wrong labels of 194, the new
    # estimate 50 % (its two estimates 36 % and 64 %) and 187. Band: wrong labels within 12 %, precision at most 0.20 high.
    assert abs(new.expected_wrong_labels - wrong.sum()) <= 0.12 * wrong.sum()
    assert old.expected_wrong_labels - wrong.sum() > 0.12 * wrong.sum()  # the old overstatement, still there
    assert new.expected_precision - measured <= 0.20 < old.expected_precision - measured
    assert new.expected_precision_low <= new.expected_precision <= new.expected_precision_high
    assert new.expected_precision_high == pytest.approx(old.expected_precision)
    assert new.model_mistake_rate >= MODEL_MISTAKE_CAUTION
    fields = {"oof_accuracy": float((probs.argmax(1) == labels).mean()), **new.__dict__}
    assert "caution: the model itself seems wrong" in trust_line(fields)

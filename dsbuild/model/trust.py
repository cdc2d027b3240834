"""How far to trust out-of-fold probabilities: the did-not-learn check, the label posterior, the flag-precision estimate.

1. :func:`learn_check` — did the model learn anything from these labels? One-sided exact
   binomial test of the out-of-fold (or valid) accuracy against the majority-class rate
   (the accuracy of always answering the most frequent label), plus Cohen's kappa
   (Cohen 1960, agreement beyond chance). Refuse when p ≥ :data:`ALPHA` or kappa <
   :data:`MIN_KAPPA`. Random labels give p ~ U(0, 1) and kappa ≈ 0; every real dataset
   measured in issue 16 (digits, CIFAR-10N worse/aggre/random) gives p < 1e-100 and kappa ≥ 0.47.
   On too few images the test cannot tell: when even 100 % accuracy would not be
   significant (``majority_rate ** n ≥ ALPHA``, e.g. 4 valid images of 2 balanced classes:
   0.5⁴ = 0.06) the verdict is *inconclusive*, not "did not learn" — a small valid split says
   nothing either way, and the message says so and what to add. Likewise when the test could pass
   but shows only some evidence (ALPHA ≤ p < :data:`EVIDENCE_ALPHA` with kappa ≥ MIN_KAPPA).

2. :func:`label_posterior` — P(true class = j | image, given label s). The OOF head
   was trained on noisy labels, so its probabilities ``q`` estimate P(given = k | x).
   cleanlab's confident joint (Northcutt et al. 2021, eq. 1–3;
   ``cleanlab.count.estimate_py_and_noise_matrices_from_probabilities``) estimates the
   noise matrix N[k, j] = P(given = k | true = j). Then
   ``p = N⁻¹ q`` (clipped at 0, renormalised) estimates P(true = j | x), and Bayes' rule
   with the annotator as a second witness gives
   ``P(true = j | x, s) ∝ p_j · N[s, j]``.
   A 10 %-noise annotator is strong evidence: a label the image model disputes at
   60 / 20 is still probably right, which is why "prediction ≠ label" over-flags on
   clean data and cleanlab's filter under-flags on a weak model.

3. Trust: the expected number of right flags is ``Σ_flagged (1 − P(true = s | x, s))``
   and of wrong labels overall ``Σ (1 − P(true = s | x, s))``; no ground truth needed.
   That posterior figure is reliable on a strong model (digits with 10–40 % planted noise within
   0–11 points of precision) and too high on a weak one: cleanlab's confident joint counts a weak
   model's own confident mistakes as wrong labels (trial 9: 30 % estimated noise against 20 %
   real, 15 % on the same photos with clean labels). The OOF probabilities are not over-confident
   there (the temperature that best fits the given labels is 1.05–1.07) and the open-set labels
   are not the cause (20 % planted in-class flips overstate as much). So :func:`trust_estimate`
   makes two estimates: the posterior's (the high one); when the model makes many mistakes of its own,
   the posterior scaled to the anchor-point noise rate (:func:`anchor_noise_rate`, the
   disagreement among each class's most confident predictions: the low one); the middle is the
   point estimate. The two are no bounds: the measured truth lies between them in 5 of the 15 regimes of
   bench/trust_calibration.py. Measured errors per regime in its docstring and that bench.
   On very confident GPU-trained probabilities both under-estimate (ResNet-18 / Swin-B on
   CIFAR-10N: the class-level noise matrix spreads real annotators' instance-dependent noise thin).
   (Flagging by this posterior, ``P(true = s | x, s) < 0.5``, was measured too: best on
   digits, but it under-flags where the noise per class pair is small — F1 0.52 vs 0.74 for
   ResNet-18 on CIFAR-10N aggre — so it is not the flag rule, see :mod:`dsbuild.issues.label`.)

Shapes: ``labels`` n int64 in [0, K); ``pred_probs`` n × K rows summing to 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Significance level of the did-not-learn binomial test (one-sided).
ALPHA = 1e-3
#: Minimum Cohen's kappa between out-of-fold predictions and given labels to trust flags.
MIN_KAPPA = 0.2
#: Below :data:`ALPHA` a model learned; between the two, with kappa ≥ :data:`MIN_KAPPA`, the sample shows some sign
#: of learning that it is too small to confirm — *too few images to tell*, not "did not learn" (trial 12: 24 valid
#: images of 3 classes, accuracy 58 % vs 38 %, p = 0.031, kappa 0.37, and 78 % out of fold on all 120). 0.05 is the
#: conventional level of "some evidence" (Fisher 1925); random labels reach it in 5 % of runs, and their kappa ≈ 0
#: keeps them "did not learn".
EVIDENCE_ALPHA = 0.05


@dataclass(frozen=True)
class LearnCheck:
    """Verdict of :func:`learn_check`.

    n: images; accuracy: argmax == label rate; majority_rate: frequency of the commonest
    label; p_value: P(accuracy ≥ observed | chance = majority_rate), exact binomial;
    kappa: Cohen's kappa of predictions vs labels; mean_log_loss and chance_log_loss
    (= ln K, a uniform guess); learned: p_value < ALPHA and kappa ≥ MIN_KAPPA;
    conclusive: the sample settles it — n is large enough for the test to pass at all (a perfect
    score's p-value, ``majority_rate ** n``, is below ALPHA) and the result is not ``some_evidence``.
    some_evidence: not learned, but p_value < :data:`EVIDENCE_ALPHA` and kappa ≥ MIN_KAPPA — a sign
    of learning too weak to confirm on n images. ``learned`` is False when not conclusive.
    """

    n: int
    n_classes: int
    accuracy: float
    majority_rate: float
    p_value: float
    kappa: float
    mean_log_loss: float
    chance_log_loss: float
    learned: bool
    conclusive: bool = True
    some_evidence: bool = False

    @property
    def verdict(self) -> str:
        """``"learned"``, ``"did not learn"`` or ``"too few images to tell"``."""
        if self.learned:
            return "learned"
        return "did not learn" if self.conclusive else "too few images to tell"

    def message(self, what: str = "out-of-fold") -> str:
        """One line for the user, e.g. for a refusal: the numbers and what to try."""
        head = (f"{what} accuracy {self.accuracy:.1%} on {self.n} images vs {self.majority_rate:.1%} for always "
                f"answering the commonest label (binomial p = {self.p_value:.2g}), kappa {self.kappa:.2f}, "
                f"log-loss {self.mean_log_loss:.2f} (chance {self.chance_log_loss:.2f})")
        if self.learned:
            return head
        if self.some_evidence:
            return (head + f" — some sign of learning, but {self.n} {what} images are too few to be sure (p < {ALPHA:g} "
                    "needed): add images (at least ~20 per class) or give the valid split more of them; "
                    "`dsbuild mislabels` judges the model on every image, out of fold")
        if not self.conclusive:
            return (head + f" — too few {what} images to tell whether the model learned: even 100% accuracy on "
                    f"{self.n} images would not be significant (p < {ALPHA:g} needs more); add images "
                    "(at least ~20 per class) or give the valid split more of them")
        return (head + " — the model did not learn these labels: check that the folders/labels mean what they say, "
                "add images (at least ~20 per class), or try a larger input size / another backbone")


def learn_check(labels: np.ndarray, pred_probs: np.ndarray, *, alpha: float = ALPHA, min_kappa: float = MIN_KAPPA) -> LearnCheck:
    """Did a model whose (out-of-sample) probabilities are ``pred_probs`` learn ``labels``?"""
    from scipy.stats import binomtest

    labels = np.asarray(labels)
    n, k = pred_probs.shape
    pred = pred_probs.argmax(1)
    hits = int((pred == labels).sum())
    counts = np.bincount(labels, minlength=k)
    majority = float(counts.max() / n)
    p_value = float(binomtest(hits, n, majority, alternative="greater").pvalue) if majority < 1 else 1.0
    po = hits / n
    pe = float((np.bincount(pred, minlength=k) * counts).sum() / n**2)
    kappa = (po - pe) / (1 - pe) if pe < 1 else 0.0
    ll = float(-np.log(np.clip(pred_probs[np.arange(n), labels], 1e-12, 1)).mean())
    could_pass = majority < 1 and n * math.log(majority) < math.log(alpha)  # a perfect score would pass
    learned = p_value < alpha and kappa >= min_kappa
    some_evidence = could_pass and not learned and p_value < EVIDENCE_ALPHA and kappa >= min_kappa
    return LearnCheck(n=n, n_classes=k, accuracy=po, majority_rate=majority, p_value=p_value, kappa=float(kappa),
                      mean_log_loss=ll, chance_log_loss=math.log(k), learned=learned,
                      conclusive=could_pass and not some_evidence, some_evidence=some_evidence)


def noise_matrix(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """cleanlab's estimate of N[k, j] = P(given = k | true = j) (K × K, columns sum to 1)."""
    from cleanlab.count import estimate_py_and_noise_matrices_from_probabilities

    _, nm, _, _ = estimate_py_and_noise_matrices_from_probabilities(labels, pred_probs)
    return np.asarray(nm, dtype=np.float64)


def label_posterior(labels: np.ndarray, pred_probs: np.ndarray, nm: np.ndarray | None = None, *,
                    invert: bool = True) -> np.ndarray:
    """P(true = j | x, given = s) for every image (n × K): see the module docstring.

    ``invert=True`` first maps the noisy-label probabilities to clean ones, ``p = N⁻¹ q``
    (least squares, clipped at 0, renormalised; falls back to ``q`` for a row that
    vanishes). ``invert=False`` uses ``q`` as ``p``.
    """
    q = np.asarray(pred_probs, dtype=np.float64)
    q = q / q.sum(1, keepdims=True)
    nm = noise_matrix(labels, q) if nm is None else nm
    p = q
    if invert:
        p = np.linalg.lstsq(nm, q.T, rcond=None)[0].T
        p = np.clip(p, 0.0, None)
        s = p.sum(1, keepdims=True)
        p = np.where(s > 1e-12, p / np.maximum(s, 1e-12), q)
    w = p * nm[labels, :]
    s = w.sum(1, keepdims=True)
    return np.where(s > 1e-300, w / np.maximum(s, 1e-300), q)


#: At or above this :attr:`TrustEstimate.model_mistake_rate`, :func:`trust_estimate` pulls the estimate down
#: toward the anchor-point noise rate and :func:`dsbuild.cycle.trust_line` cautions that fewer flags may be
#: real. Measured (bench/trust_calibration.py): 0.14–0.16 on 1,000 CIFAR-10N photos with dsbuild's default heads
#: (56–74 % accurate; the posterior alone 0.09–0.41 above the measured precision), 0.01–0.06 on digits with
#: 0–40 % planted noise (the posterior within 0.11), 0.06–0.11 for the GPU ResNet-18 / Swin-B probabilities.
MODEL_MISTAKE_CAUTION = 0.10

#: Share of each predicted class's most confident out-of-fold predictions that
#: :func:`anchor_noise_rate` reads the label-noise rate from (per class, at least one image).
ANCHOR_FRACTION = 0.2


def anchor_noise_rate(labels: np.ndarray, pred_probs: np.ndarray, *, fraction: float = ANCHOR_FRACTION) -> float:
    """The share of wrong given labels among the images the model is surest of: for each predicted class, the
    ``fraction`` of its images with the highest out-of-fold probability ("anchor points", Liu & Tao 2016,
    Patrini et al. 2017), the rate at which their given label is not that class.

    A model is rarely wrong on its most confident images even when it is weak (trial 9: 6 % there against 35 %
    overall), so the disagreement there is mostly label noise: unlike cleanlab's confident joint it does not count
    the model's own mistakes on hard images as wrong labels. It misses the noise that concentrates on hard, ambiguous
    images (real annotators'), so it is the low estimate (:func:`trust_estimate`).
    """
    labels = np.asarray(labels)
    p = np.asarray(pred_probs, dtype=np.float64)
    pred, conf = p.argmax(1), p.max(1)
    anchors = np.zeros(len(labels), dtype=bool)
    for k in np.unique(pred):
        idx = np.flatnonzero(pred == k)
        anchors[idx[np.argsort(-conf[idx], kind="stable")[: max(1, math.ceil(fraction * len(idx)))]]] = True
    return float((pred != labels)[anchors].mean()) if anchors.any() else 0.0


@dataclass(frozen=True)
class TrustEstimate:
    """Expected quality of a set of flags, no ground truth needed: a point estimate, the middle of two estimates
    (see :func:`trust_estimate`; they are no bounds on the truth).

    n_flagged; expected_right (point), the middle of expected_right_low and expected_right_high: how many flags
    have a wrong label; expected_precision = expected_right / n_flagged (and _low, _high); expected_wrong_labels (and
    _low, _high): wrong labels in the whole dataset; expected_recall = expected_right / expected_wrong_labels;
    posterior_noise_rate (the label posterior's, cleanlab's noise matrix) and anchor_noise_rate
    (:func:`anchor_noise_rate`): the two estimates of the share of wrong labels the low and high figures come from;
    model_mistake_rate: the share of images whose out-of-fold prediction differs from the given label, less
    posterior_noise_rate — the disagreements the posterior puts down to the model's own mistakes (NaN without
    ``pred_probs``; see :data:`MODEL_MISTAKE_CAUTION`).
    """

    n_flagged: int
    expected_right: float
    expected_precision: float
    expected_wrong_labels: float
    expected_recall: float
    expected_right_low: float = float("nan")
    expected_right_high: float = float("nan")
    expected_precision_low: float = float("nan")
    expected_precision_high: float = float("nan")
    expected_wrong_labels_low: float = float("nan")
    expected_wrong_labels_high: float = float("nan")
    posterior_noise_rate: float = float("nan")
    anchor_noise_rate: float = float("nan")
    model_mistake_rate: float = float("nan")


def trust_estimate(labels: np.ndarray, posterior: np.ndarray, flags: np.ndarray,
                   pred_probs: np.ndarray | None = None) -> TrustEstimate:
    """:class:`TrustEstimate` of boolean ``flags`` (n) given ``posterior`` from :func:`label_posterior` and the
    out-of-fold ``pred_probs`` it came from (for :func:`anchor_noise_rate`).

    The high estimate: the posterior as it stands, ``P(wrong)_i = 1 − P(true = s_i | x_i, s_i)``; it carries cleanlab's
    estimate of the noise rate ``η_post = Σ_i P(wrong)_i / n``, which counts a weak model's confident mistakes
    as wrong labels. When the model makes many mistakes of its own — ``model_mistake_rate`` (the share of images
    whose prediction differs from the label, less ``η_post``) ≥ :data:`MODEL_MISTAKE_CAUTION` — the low estimate is
    every ``P(wrong)_i`` scaled by ``r = min(1, η_anchor / η_post)``, so that the total matches
    :func:`anchor_noise_rate`, which misses the noise on hard images; otherwise ``r = 1`` (the confident joint is
    right on a strong model, and a few dozen anchors on a small dataset would only add chance: 250 digits with 20
    planted gave r = 0.77 and an estimate of 15 wrong labels for 20). Point estimate: the middle,
    ``P(wrong)_i · (1 + r) / 2``. Expected right flags = ``Σ_flagged P(wrong)_i``, wrong labels in all =
    ``Σ_i P(wrong)_i``, at each of the three.

    Measured (bench/trust_calibration.py; flags of :func:`flag_label_issues`; error = estimated − measured
    precision of the flags, old (the posterior alone, the high estimate) → new (the point estimate)):

    * trial 9 (1,000 CIFAR-10N photos of 32 px, 5 classes, one annotator's labels, 200 wrong; dsbuild's default
      out-of-fold heads, 62 % accurate): +0.18 → +0.03 (48 %, the two estimates 34 % and 63 %, measured 45 %); wrong labels in all
      237 → 183 (200). After trial 9's review: +0.21 → +0.05. The same photos with the aggre, worse, random2,
      random3, clean and 20 %-planted labels (56–74 % accurate): mean |error| of all eight 0.22 → 0.11; the clean
      labels stay the worst, +0.41 → +0.29 (a weak model's mistakes look like label noise, and nothing in the
      probabilities tells them apart: the caution of :func:`dsbuild.cycle.trust_line` says so);
    * digits with 10–40 % planted noise (600 images, the default heads, 95–99 % accurate against the truth):
      unchanged, −0.11…+0.01 (``r`` = 1);
    * the published GPU ResNet-18 / Swin-B probabilities on CIFAR-10N worse / aggre (5,000 images): −0.16…−0.50,
      unchanged but for ResNet-18 worse, −0.16 → −0.20 — under-estimated before and after: real annotators' noise
      concentrates on ambiguous images, which the class-level noise matrix spreads thin.

    The two are estimates, not bounds: the measured precision lies between them in 5 of the 15 regimes of the
    benchmark (2026-12-02: CIFAR 4 of 6, digits 1 of 5 — the two are one number there —, GPU 0 of 4). Without
    ``pred_probs``
    the low estimate equals the high one (the point estimate is the posterior's, as before).
    """
    p_wrong = 1.0 - posterior[np.arange(len(labels)), labels]
    n = int(flags.sum())
    total = float(p_wrong.sum())
    eta_post = total / len(labels) if len(labels) else float("nan")
    eta_anchor = anchor_noise_rate(labels, pred_probs) if pred_probs is not None else float("nan")
    mistakes = (float((np.asarray(pred_probs).argmax(1) != labels).mean()) - eta_post
                if pred_probs is not None and len(labels) else float("nan"))
    r = min(1.0, eta_anchor / eta_post) if mistakes >= MODEL_MISTAKE_CAUTION and eta_post > 0 else 1.0
    hi_right = float(p_wrong[flags].sum())
    mid = (1.0 + r) / 2.0

    def share(x: float) -> float:
        return x / n if n else float("nan")

    right = hi_right * mid
    return TrustEstimate(
        n_flagged=n, expected_right=right, expected_precision=share(right), expected_wrong_labels=total * mid,
        expected_recall=hi_right / total if total > 0 else float("nan"),
        expected_right_low=hi_right * r, expected_right_high=hi_right,
        expected_precision_low=share(hi_right * r), expected_precision_high=share(hi_right),
        expected_wrong_labels_low=total * r, expected_wrong_labels_high=total,
        posterior_noise_rate=eta_post, anchor_noise_rate=eta_anchor, model_mistake_rate=mistakes)


#: :func:`flag_label_issues` flags a label when the out-of-fold prediction differs from it
#: *and* its out-of-fold probability is below this. Chosen by the issue-16 benchmark over
#: pred ≠ given alone, cleanlab's filters (prune_by_noise_rate, prune_by_class, both) and the
#: posterior rule, on CIFAR-10N worse/aggre (dsbuild's OOF and the published ResNet-18 and
#: Swin-B ones) and digits with 10–20 % planted noise: prediction ≠ label over-flags
#: ambiguous images when the model is accurate (digits F1 0.93–0.97), cleanlab's filters
#: under-flag at low noise (ResNet-18 aggre F1 0.69–0.70 vs 0.77 here); see bench/real_noise.py.
FLAG_MAX_QUALITY = 0.3


def flag_label_issues(labels: np.ndarray, pred_probs: np.ndarray, *, max_quality: float = FLAG_MAX_QUALITY) -> np.ndarray:
    """``n`` bool: the out-of-fold argmax is another class and ``pred_probs[i, labels[i]] < max_quality``.

    ``pred_probs[i, labels[i]]`` is cleanlab's ``self_confidence`` label quality.
    """
    labels = np.asarray(labels)
    p = np.asarray(pred_probs, dtype=np.float64)
    quality = p[np.arange(len(labels)), labels]
    return (p.argmax(1) != labels) & (quality < max_quality)

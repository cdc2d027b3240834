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
   nothing either way, and the message says so and what to add.

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
   and of wrong labels overall ``Σ (1 − P(true = s | x, s))`` (:func:`trust_estimate`);
   no ground truth needed. Measured against the truth (issue 16): CIFAR-10N worse 1,770
   expected vs 1,732 right flags; digits with 10–20 % planted noise within 1–3 %; on very
   confident GPU-trained probabilities it under-estimates (ResNet-18 worse: 1,540 vs 1,892).
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


@dataclass(frozen=True)
class LearnCheck:
    """Verdict of :func:`learn_check`.

    n: images; accuracy: argmax == label rate; majority_rate: frequency of the commonest
    label; p_value: P(accuracy ≥ observed | chance = majority_rate), exact binomial;
    kappa: Cohen's kappa of predictions vs labels; mean_log_loss and chance_log_loss
    (= ln K, a uniform guess); learned: p_value < ALPHA and kappa ≥ MIN_KAPPA;
    conclusive: n is large enough for the test to pass at all (a perfect score's p-value,
    ``majority_rate ** n``, is below ALPHA). ``learned`` is False when not conclusive.
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
    conclusive = majority < 1 and n * math.log(majority) < math.log(alpha)  # a perfect score would pass
    return LearnCheck(n=n, n_classes=k, accuracy=po, majority_rate=majority, p_value=p_value, kappa=float(kappa),
                      mean_log_loss=ll, chance_log_loss=math.log(k), learned=p_value < alpha and kappa >= min_kappa,
                      conclusive=conclusive)


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


@dataclass(frozen=True)
class TrustEstimate:
    """Expected quality of a set of flags, from the label posterior (no ground truth needed).

    n_flagged; expected_right: Σ over flags of P(given label wrong); expected_precision =
    expected_right / n_flagged; expected_wrong_labels: Σ over all images of P(given label
    wrong); expected_recall = expected_right / expected_wrong_labels.
    """

    n_flagged: int
    expected_right: float
    expected_precision: float
    expected_wrong_labels: float
    expected_recall: float


def trust_estimate(labels: np.ndarray, posterior: np.ndarray, flags: np.ndarray) -> TrustEstimate:
    """:class:`TrustEstimate` of boolean ``flags`` (n) given ``posterior`` from :func:`label_posterior`."""
    p_wrong = 1.0 - posterior[np.arange(len(labels)), labels]
    right = float(p_wrong[flags].sum())
    total = float(p_wrong.sum())
    n = int(flags.sum())
    return TrustEstimate(n_flagged=n, expected_right=right, expected_precision=right / n if n else float("nan"),
                         expected_wrong_labels=total, expected_recall=right / total if total > 0 else float("nan"))


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

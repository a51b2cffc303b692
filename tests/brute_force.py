"""An independent float64 brute force of everything ace_core computes.

Nothing here comes from ace_core: the math is written out again from the math of the contract
(docs/contract.rst) in plain Python loops over NumPy data (``math.exp``/``math.log``,
``math.fsum`` for sums), as slowly and literally as possible, so that a shared
mistake is unlikely. Shapes are tiny in the tests; speed does not matter.

Conventions: ``scores`` is ``(B, T, C)`` or ``(B, H, W, C)`` (class axis last,
2D maps read row by row: h outer, w inner); ``valid`` is ``None`` (every step),
a ``(B, T)`` or ``(B, H, W)`` boolean array. A sample that the contract calls
infeasible (``T_b = 0`` or a negative count) gets ``nan`` here; tests decide
what the library must give instead (an error, or 0 with ``zero_infinity``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

# ---------------------------------------------------------------------------
# Layout


def steps_of(scores: np.ndarray, convert: Callable = float) -> list[list[list]]:
    """``steps[b][t]`` = the C scores of step t of sample b (a 2D map read row by row).

    Entries go through ``convert``: ``float``, or ``mp.mpf`` to keep mpmath precision.
    """
    scores = np.asarray(scores)
    result = []
    for b in range(scores.shape[0]):
        sample = []
        if scores.ndim == 3:
            for t in range(scores.shape[1]):
                sample.append([convert(v) for v in scores[b, t]])
        else:
            for h in range(scores.shape[1]):
                for w in range(scores.shape[2]):
                    sample.append([convert(v) for v in scores[b, h, w]])
        result.append(sample)
    return result


def valid_of(valid: np.ndarray | None, scores: np.ndarray) -> list[list[bool]]:
    """``valid[b][t]`` as Python bools, in the reading order of :func:`steps_of`."""
    batch = scores.shape[0]
    steps = int(np.prod(scores.shape[1:-1]))
    if valid is None:
        return [[True] * steps for _ in range(batch)]
    valid = np.asarray(valid)
    result = []
    for b in range(batch):
        if valid.ndim == 2:
            result.append([bool(v) for v in valid[b]])
        else:
            result.append(
                [bool(valid[b, h, w]) for h in range(valid.shape[1]) for w in range(valid.shape[2])]
            )
    return result


def valid_from_lengths(lengths: Sequence[int], steps: int) -> np.ndarray:
    """``(B, T)`` bool: the first ``lengths[b]`` steps of each sample."""
    valid = np.zeros((len(lengths), steps), dtype=bool)
    for b, length in enumerate(lengths):
        for t in range(int(length)):
            valid[b, t] = True
    return valid


# ---------------------------------------------------------------------------
# Losses


def softmax(row: Sequence[float]) -> list[float]:
    peak = max(row)
    exps = [math.exp(v - peak) for v in row]
    total = math.fsum(exps)
    return [e / total for e in exps]


def _is_feasible(counts_row: Sequence[float], length: int) -> bool:
    return length > 0 and all(n >= 0 for n in counts_row)


def _valid_probabilities(scores: np.ndarray, valid: np.ndarray | None, from_logits: bool) -> list[list[list]]:
    """Per sample, the probability rows of its valid steps (softmax of logits, or as given)."""
    steps, keep = steps_of(scores), valid_of(valid, scores)
    return [
        [softmax(row) if from_logits else list(row) for row, k in zip(sample, keep[b], strict=True) if k]
        for b, sample in enumerate(steps)
    ]


def ace_per_sample(
    scores: np.ndarray, counts: np.ndarray, valid: np.ndarray | None = None, *, from_logits: bool = True
) -> np.ndarray:
    """``L_b = -Σ_{k: N>0} (N_bk/T_b) log((1/T_b) Σ_{t valid} y_btk)``; nan for infeasible samples."""
    counts = np.asarray(counts, dtype=np.float64)
    losses = []
    for b, chosen in enumerate(_valid_probabilities(scores, valid, from_logits)):
        length = len(chosen)
        if not _is_feasible(counts[b], length):
            losses.append(math.nan)
            continue
        terms = []
        for k in range(counts.shape[1]):
            n = float(counts[b, k])
            if n == 0:
                continue  # N = 0 contributes exactly 0, even where ȳ = 0
            mean_y = math.fsum(p[k] for p in chosen) / length
            terms.append((n / length) * math.log(mean_y))
        losses.append(-math.fsum(terms))
    return np.array(losses)


def _logsumexp(values: Sequence[float]) -> float:
    peak = max(values)
    if peak == -math.inf:
        return -math.inf
    return peak + math.log(math.fsum(math.exp(v - peak) for v in values))


def ace_per_sample_log_space(
    scores: np.ndarray, counts: np.ndarray, valid: np.ndarray | None = None
) -> np.ndarray:
    """The logits loss computed in log space (float64 ``math``), for logits far outside [-700, 700]."""
    steps, keep = steps_of(scores), valid_of(valid, scores)
    counts = np.asarray(counts, dtype=np.float64)
    losses = []
    for b, sample in enumerate(steps):
        log_probs = [[v - _logsumexp(row) for v in row] for row, k in zip(sample, keep[b], strict=True) if k]
        length = len(log_probs)
        if not _is_feasible(counts[b], length):
            losses.append(math.nan)
            continue
        terms = []
        for k in range(counts.shape[1]):
            n = float(counts[b, k])
            if n != 0:
                log_mean_y = _logsumexp([row[k] for row in log_probs]) - math.log(length)
                terms.append((n / length) * log_mean_y)
        losses.append(-math.fsum(terms))
    return np.array(losses)


def regression_per_sample(
    scores: np.ndarray, counts: np.ndarray, valid: np.ndarray | None = None, *, from_logits: bool = True
) -> np.ndarray:
    """Eq. 4: ``½ Σ_k (N_bk - Σ_{t valid} y_btk)²``."""
    counts = np.asarray(counts, dtype=np.float64)
    losses = []
    for b, chosen in enumerate(_valid_probabilities(scores, valid, from_logits)):
        terms = []
        for k in range(counts.shape[1]):
            mass = math.fsum(p[k] for p in chosen)
            terms.append(0.5 * (float(counts[b, k]) - mass) ** 2)
        losses.append(math.fsum(terms))
    return np.array(losses)


def reduce(per_sample: np.ndarray, reduction: str) -> np.ndarray:
    """``"none"`` → (B,), ``"sum"``, ``"mean"`` = sum / B (the batch mean, not CTC's)."""
    if reduction == "none":
        return np.asarray(per_sample, dtype=np.float64)
    total = math.fsum(float(v) for v in per_sample)
    return np.float64(total if reduction == "sum" else total / len(per_sample))


def entropy(counts: np.ndarray) -> np.ndarray:
    """``H(N̄_b) = -Σ_{k: N>0} N̄ log N̄`` with ``N̄ = N / Σ_k N``: the smallest ACE loss."""
    counts = np.asarray(counts, dtype=np.float64)
    result = []
    for row in counts:
        total = math.fsum(row)
        result.append(-math.fsum((n / total) * math.log(n / total) for n in row if n > 0))
    return np.array(result)


def central_difference(f: Callable[[np.ndarray], float], x: np.ndarray, step: float = 1e-5) -> np.ndarray:
    """``∂f/∂x`` by central differences, one element at a time (float64).

    The step actually taken, ``(x + h) - (x - h)``, is used as the divisor, so
    that rounding of ``x ± h`` does not bias the quotient.
    """
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        original = x[index]
        x[index] = original + step
        up_point, up = x[index], float(f(x))
        x[index] = original - step
        down_point, down = x[index], float(f(x))
        x[index] = original
        grad[index] = (up - down) / (up_point - down_point)
    return grad


# ---------------------------------------------------------------------------
# High precision (mpmath), for inputs where float64 itself loses the answer


def ace_per_sample_mp(scores: np.ndarray, counts: np.ndarray, valid: np.ndarray | None = None, *, mp) -> list:
    """The logits loss in ``mp`` precision (``mp`` is an ``mpmath`` context); mpf per sample."""
    steps, keep = steps_of(scores, convert=mp.mpf), valid_of(valid, scores)
    losses = []
    for b, sample in enumerate(steps):
        rows = [row for row, k in zip(sample, keep[b], strict=True) if k]
        length = len(rows)
        probabilities = []
        for row in rows:
            exps = [mp.exp(v) for v in row]  # mpmath's exponent range holds exp(±1e4)
            total = mp.fsum(exps)
            probabilities.append([e / total for e in exps])
        total_loss = mp.mpf(0)
        for k in range(counts.shape[1]):
            n = int(counts[b, k])
            if n != 0:
                mean_y = mp.fsum(p[k] for p in probabilities) / length
                total_loss -= mp.mpf(n) / length * mp.log(mean_y)
        losses.append(total_loss)
    return losses


def gradient_mp(scores: np.ndarray, counts: np.ndarray, valid: np.ndarray | None = None, *, mp) -> np.ndarray:
    """``∂(Σ_b L_b)/∂a`` by central differences in ``mp`` precision (step 1e-15), as float64."""
    step = mp.mpf("1e-15")
    flat = [mp.mpf(float(v)) for v in np.asarray(scores, dtype=np.float64).ravel()]
    shape = np.shape(scores)

    def total(values: list) -> object:
        as_array = np.array(values, dtype=object).reshape(shape)
        return mp.fsum(ace_per_sample_mp(as_array, counts, valid, mp=mp))

    grad = np.zeros(len(flat))
    for i in range(len(flat)):
        up, down = list(flat), list(flat)
        up[i] += step
        down[i] -= step
        grad[i] = float((total(up) - total(down)) / (2 * step))
    return grad.reshape(shape)


# ---------------------------------------------------------------------------
# Counts and decoding


def counts_from_label_lists(
    labels: Sequence[Sequence[int]], num_classes: int, input_lengths: Sequence[int], blank: int = 0
) -> np.ndarray:
    """``N_bk`` = occurrences of k in label b; the blank entry holds ``T_b - |S_b|``."""
    counts = np.zeros((len(labels), num_classes), dtype=np.int64)
    for b, label in enumerate(labels):
        for symbol in label:
            counts[b, int(symbol)] += 1
        counts[b, blank] = int(input_lengths[b]) - len(label)
    return counts


def label_lists_from_padded(
    targets: np.ndarray, target_lengths: Sequence[int] | None = None
) -> list[list[int]]:
    targets = np.asarray(targets)
    result = []
    for b in range(targets.shape[0]):
        length = targets.shape[1] if target_lengths is None else int(target_lengths[b])
        result.append([int(targets[b, s]) for s in range(length)])
    return result


def label_lists_from_concatenated(targets: np.ndarray, target_lengths: Sequence[int]) -> list[list[int]]:
    result, start = [], 0
    for length in target_lengths:
        result.append([int(v) for v in np.asarray(targets)[start : start + int(length)]])
        start += int(length)
    return result


def argmax(row: Sequence[float]) -> int:
    """Index of the largest entry, the first on ties (as NumPy's argmax)."""
    best = 0
    for k in range(1, len(row)):
        if row[k] > row[best]:
            best = k
    return best


def greedy_decode(
    scores: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    blank: int = 0,
    collapse_repeats: bool = True,
    order: str = "row",
) -> list[list[int]]:
    """Best class per valid step; runs merged (if asked) before blanks are dropped.

    ``order="column"`` reads a 2D map column by column (w outer, h inner).
    """
    scores = np.asarray(scores, dtype=np.float64)
    batch = scores.shape[0]
    if valid is None:
        valid = np.ones(scores.shape[:-1], dtype=bool)
    valid = np.asarray(valid).reshape(scores.shape[:-1])
    decoded = []
    for b in range(batch):
        if scores.ndim == 3:
            positions = [(t,) for t in range(scores.shape[1])]
        elif order == "row":
            positions = [(h, w) for h in range(scores.shape[1]) for w in range(scores.shape[2])]
        else:
            positions = [(h, w) for w in range(scores.shape[2]) for h in range(scores.shape[1])]
        best = [argmax(scores[(b, *p)]) for p in positions if valid[(b, *p)]]
        labels, previous = [], None
        for label in best:
            if label != blank and not (collapse_repeats and label == previous):
                labels.append(label)
            previous = label
        decoded.append(labels)
    return decoded


def aggregated_probabilities(
    scores: np.ndarray, valid: np.ndarray | None = None, *, from_logits: bool = True
) -> np.ndarray:
    """``Σ_{t valid} y_btk`` ``(B, C)``: what ``decode_counts`` rounds."""
    steps, keep = steps_of(scores), valid_of(valid, scores)
    mass = np.zeros((scores.shape[0], scores.shape[-1]))
    for b, sample in enumerate(steps):
        rows = [softmax(row) if from_logits else row for row, k in zip(sample, keep[b], strict=True) if k]
        for k in range(scores.shape[-1]):
            mass[b, k] = math.fsum(row[k] for row in rows)
    return mass

"""Choose the step-cost model by held-out error: fit each candidate on part of the measured steps,
price the rest, and keep the simplest whose error is within a margin of the best.

The candidates, simplest first: linear (base + per decode sequence + per prompt token), linear
with a term per context token, a roofline (the larger of a compute and a memory term) and a table
of step time by decode batch size. The folds are alternating blocks of consecutive rows, so a
held-out step's neighbours (its noise and its batch) are mostly held out with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares, lsq_linear

from simulator.engine.stepcost import (
    CostModel,
    DecodeTableCost,
    RooflineCost,
    StepCost,
)

OUTLIER_MADS = 6.0  # a step further than this many robust deviations from the fit is dropped
FOLDS = 5
MARGIN = 0.05  # a more complex model must cut the held-out error by more than this to be chosen
MIN_ROWS = 100  # fewer rows than this: the linear model, no selection
MAX_KNOTS = 8  # batch sizes in a table at most
KNOT_ROWS = 30  # rows a batch size needs to be a knot of the table (fewer: too noisy to price)


@dataclass(frozen=True)
class StepRows:
    """Timed rows: each spans `steps` engine steps (1 for a recovered step; more for the interval
    between two chunks of a server that writes several tokens a chunk)."""

    steps: np.ndarray
    decode: np.ndarray  # decoding sequences, summed over the row's steps
    prefill: np.ndarray  # prompt tokens prefilled in them
    context: np.ndarray | None  # KV tokens attended, summed likewise (None: not known)
    seconds: np.ndarray

    def __len__(self) -> int:
        return len(self.seconds)

    def take(self, rows: np.ndarray) -> StepRows:
        ctx = None if self.context is None else self.context[rows]
        return StepRows(
            self.steps[rows], self.decode[rows], self.prefill[rows], ctx, self.seconds[rows]
        )


@dataclass(frozen=True)
class Candidate:
    name: str
    held_out_s: float  # mean absolute error of a held-out step's time


@dataclass(frozen=True)
class Selection:
    name: str
    model: CostModel  # the chosen candidate, fitted on every row
    candidates: tuple[Candidate, ...]


def robust_lstsq(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative least squares (a mean fit: queueing depends on mean service time) refitted
    without the rows whose residual is beyond OUTLIER_MADS robust deviations of their group (a
    paused client, a garbage collection): (coefficients, rows kept)."""
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
    return _robust(
        lambda k: lsq_linear(x[k] / scale, y[k], bounds=(0.0, np.inf)).x / scale,
        lambda b: y - x @ b,
        len(y),
        x.shape[1],
        groups,
    )


MIN_GROUP = 8  # rows a group needs before any of them is judged an outlier


def _robust(
    fit: Callable[[np.ndarray], np.ndarray],
    residuals: Callable[[np.ndarray], np.ndarray],
    n: int,
    params: int,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit, drop the rows beyond OUTLIER_MADS robust deviations, refit, until the rows settle.

    Deviations are judged within each group (`groups`: a label per row): steps that prefill a
    prompt are few, slow and scattered beside decode-only steps, and judged by the decode
    steps' spread they would all be dropped, and the prompt's cost with them."""
    labels = np.zeros(n, dtype=int) if groups is None else np.asarray(groups).astype(int)
    keep = np.ones(n, dtype=bool)
    beta = fit(keep)
    for _ in range(5):
        resid = residuals(beta)
        now = np.ones(n, dtype=bool)
        for g in np.unique(labels):
            rows = labels == g
            judged = rows & keep
            if judged.sum() < MIN_GROUP:
                continue
            centre = float(np.median(resid[judged]))
            spread = 1.4826 * float(np.median(np.abs(resid[judged] - centre)))
            now[rows] = np.abs(resid[rows] - centre) <= max(OUTLIER_MADS * spread, 1e-9)
        if np.array_equal(now, keep) or now.sum() < params + 1:
            break
        keep = now
        beta = fit(keep)
    return beta, keep


def _solve(x: np.ndarray, r: StepRows, always: np.ndarray) -> np.ndarray:
    """Robust non-negative coefficients (outliers judged apart for prefill and decode-only
    rows); a column that does not vary (and is not `always` fitted) cannot be told from the
    others and gets 0."""
    cols = always | (np.ptp(x, axis=0) > 0) if len(r) else always
    beta = np.zeros(x.shape[1])
    beta[cols] = robust_lstsq(x[:, cols], r.seconds, r.prefill > 0)[0]
    return beta


def _linear_columns(r: StepRows, context: bool) -> np.ndarray:
    cols = [r.steps, r.decode, r.prefill]
    if context and r.context is not None:
        cols.append(r.context)
    return np.column_stack(cols)


def fit_linear(r: StepRows) -> StepCost:
    b = _solve(_linear_columns(r, False), r, np.array([True, False, False]))
    return StepCost(float(b[0]), float(b[1]), float(b[2]))


def fit_context(r: StepRows) -> StepCost:
    b = _solve(_linear_columns(r, True), r, np.array([True, False, False, False]))
    return StepCost(float(b[0]), float(b[1]), float(b[2]), float(b[3]))


def knots(batch: np.ndarray) -> np.ndarray:
    """The table's batch sizes: those (rounded) with KNOT_ROWS rows or more, thinned to MAX_KNOTS
    at quantiles of the rows, the smallest and largest always kept."""
    sizes, counts = np.unique(np.round(batch), return_counts=True)
    common = sizes[counts >= KNOT_ROWS]
    if len(common) <= MAX_KNOTS:
        return common if len(common) else sizes[[np.argmax(counts)]]
    inner = np.quantile(batch, np.linspace(0, 1, MAX_KNOTS)[1:-1])
    picked = common[np.abs(common[:, None] - inner[None, :]).argmin(axis=0)]
    return np.unique(np.concatenate([common[[0, -1]], picked]))


def _hats(xs: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """Weights of each knot in the piecewise-linear interpolation at `batch` (rows x knots),
    linear beyond the end knots: step time = weights @ the knots' times."""
    w = np.zeros((len(batch), len(xs)))
    if len(xs) == 1:
        w[:, 0] = 1.0
        return w
    i = np.clip(np.searchsorted(xs, batch, side="right") - 1, 0, len(xs) - 2)
    t = (batch - xs[i]) / (xs[i + 1] - xs[i])
    rows = np.arange(len(batch))
    w[rows, i] = 1.0 - t
    w[rows, i + 1] = t
    return w


def fit_table(r: StepRows) -> DecodeTableCost:
    batch = r.decode / r.steps  # a row's mean batch: its steps are priced at it
    xs = knots(batch)
    context = r.context is not None
    x = np.column_stack([r.steps[:, None] * _hats(xs, batch), _linear_columns(r, context)[:, 2:]])
    always = np.arange(x.shape[1]) < len(xs)
    b = _solve(x, r, always)
    per_context = float(b[len(xs) + 1]) if context else 0.0
    return DecodeTableCost(
        tuple(map(float, xs)), tuple(map(float, b[: len(xs)])), float(b[len(xs)]), per_context
    )


def fit_roofline(r: StepRows) -> RooflineCost:
    """A robust non-linear least-squares fit, started from a few guesses around the linear fit."""
    assert r.context is not None
    tokens, context, y = r.decode + r.prefill, r.context, r.seconds
    lin = fit_context(r)
    scale = np.array([max(float(np.median(y)), 1e-6), 1e-4, 1e-3, 1e-7])

    def resid(p: np.ndarray, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        base, per_token, memory, per_ctx = p * scale
        step = base + np.maximum(per_token * tokens[rows], memory + per_ctx * context[rows])
        return np.asarray(y[rows] - step)

    def jac(p: np.ndarray, rows: np.ndarray) -> np.ndarray:
        _, per_token, memory, per_ctx = p * scale
        t, c = tokens[rows], context[rows]
        bound = per_token * t > memory + per_ctx * c  # compute-bound rows
        ones = np.ones(len(rows))
        return -np.column_stack([ones, t * bound, ~bound * ones, c * ~bound]) * scale

    slopes = [lin.per_prefill_token_s, lin.per_decode_seq_s]
    starts = [
        np.array([lin.base_s * f, a, lin.base_s * (1 - f), lin.per_context_token_s]) / scale
        for a in slopes
        for f in (0.25, 0.75)
    ]

    def fit(keep: np.ndarray) -> np.ndarray:
        """From every start the first time, then from the last fit (rows only dropped)."""
        rows = np.flatnonzero(keep)
        best = min(
            (least_squares(resid, s, jac=jac, bounds=(0.0, np.inf), args=(rows,)) for s in starts),
            key=lambda res: float(res.cost),
        )
        starts[:] = [best.x]
        return np.asarray(best.x)

    p, _ = _robust(fit, resid, len(y), 4, r.prefill > 0)
    return RooflineCost(*map(float, p * scale))


def predict(model: CostModel, r: StepRows) -> np.ndarray:
    """Each row's seconds under `model` (its steps priced at the row's mean batch)."""
    k, p = r.steps, r.prefill
    c = r.context if r.context is not None else np.zeros(len(k))
    if isinstance(model, StepCost):
        return (
            k * model.base_s
            + model.per_decode_seq_s * r.decode
            + model.per_prefill_token_s * p
            + model.per_context_token_s * c
        )
    if isinstance(model, DecodeTableCost):
        batch, each = np.unique(r.decode / k, return_inverse=True)  # few distinct batches
        table = np.array([model.decode_s(float(b)) for b in batch])[each.ravel()]
        return k * table + model.per_prefill_token_s * p + model.per_context_token_s * c
    tokens = r.decode + p
    compute = model.per_token_s * tokens + model.compute_per_context_token_s * c
    memory = k * model.memory_s + model.per_context_token_s * c
    return k * model.base_s + model.per_token_comm_s * tokens + np.maximum(compute, memory)


# simplest first: a later one is chosen only if it beats the earlier by the margin
FITTERS: dict[str, Callable[[StepRows], CostModel]] = {
    "linear": fit_linear,
    "linear+context": fit_context,
    "roofline": fit_roofline,
    "table": fit_table,
}
NEEDS_CONTEXT = ("linear+context", "roofline")


def folds(n: int) -> np.ndarray:
    """Each row's fold: alternating blocks of consecutive rows, ten blocks a fold or more."""
    block = max(n // (FOLDS * 10), 1)
    return (np.arange(n) // block) % FOLDS


def held_out_error(fitter: Callable[[StepRows], CostModel], r: StepRows, cap: float) -> float:
    """Mean absolute error of a step's time, each row predicted by the model fitted on the folds
    it is not in, and no row's error counted beyond `cap` (an outlier weighs alike on all)."""
    fold = folds(len(r))
    errors = np.zeros(len(r))
    for f in range(FOLDS):
        test = fold == f
        model = fitter(r.take(np.flatnonzero(~test)))
        errors[test] = np.abs(r.seconds[test] - predict(model, r.take(np.flatnonzero(test))))
    return float(np.mean(np.minimum(errors / r.steps, cap)))


def outlier_cap(r: StepRows) -> float:
    """A step error beyond which a row counts as an outlier: OUTLIER_MADS robust deviations of
    the linear fit's residuals."""
    resid = (r.seconds - predict(fit_linear(r), r)) / r.steps
    return OUTLIER_MADS * 1.4826 * float(np.median(np.abs(resid - np.median(resid))))


def select(r: StepRows) -> Selection:
    """The candidate with the least held-out error, or a simpler one within MARGIN of it, fitted
    on every row."""
    if len(r) < MIN_ROWS:
        return Selection("linear", fit_linear(r), ())
    names = [n for n in FITTERS if r.context is not None or n not in NEEDS_CONTEXT]
    cap = max(outlier_cap(r), 1e-9)
    candidates = tuple(Candidate(n, held_out_error(FITTERS[n], r, cap)) for n in names)
    best = min(c.held_out_s for c in candidates)
    chosen = next(c.name for c in candidates if c.held_out_s * (1 - MARGIN) <= best)
    return Selection(chosen, FITTERS[chosen](r), candidates)

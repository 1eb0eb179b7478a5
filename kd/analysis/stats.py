"""The statistics behind verdicts, gains, rankings and seeds planning. Pure functions (numpy, scipy).

Conventions
    level       every interval is a two-sided 90 % interval: each end is a one-sided test at
                ALPHA = 5 %, which is what an equivalence test (TOST) and a one-sided "worse by more than
                the tolerance" test use. So "reproduced" is an equivalence claim at 5 %, "below"/"above"
                a minimum-effect claim at 5 %.
    mean        a mean over n seeds has standard error s / sqrt(n) (s: sample std, ddof 1) and n - 1
                degrees of freedom; a published mean printed with its std over k runs, std / sqrt(k) and
                k - 1; two independent errors combine by Welch-Satterthwaite (`welch`).
    draws       resampled quantities (gains, P(A beats B), Spearman's rho) use DRAWS draws from a
                generator seeded by the quantity's name (`rng`), so a report is the same every time.
                Seed level: the mean over n seeds is drawn as mean + s / sqrt(n) * T(n - 1) (the t
                distribution of the mean, a parametric bootstrap: a plain bootstrap over 3 to 5 seeds is
                too narrow, its 90 % interval being about the range of the seeds). Example level, where
                predictions are stored: the test examples are resampled with replacement (shared by the
                quantities compared), adding the test set's own sampling error. Together these make the
                two-level bootstrap of seeds and test examples, slightly conservative.
    power       seeds per method to resolve a gain d with per-seed std sigma (two-sample, 80 % power,
                two-sided alpha 5 %, normal approximation): n = ceil(2 (z(0.975) + z(0.8))^2 sigma^2 / d^2).
"""
from __future__ import annotations

import math
import zlib

import numpy as np
from scipy import stats as st

ALPHA = 0.05
LEVEL = 1 - 2 * ALPHA
DRAWS = 4000
EPS = 1e-9


def rng(name: str) -> np.random.Generator:
    """A generator seeded by `name` alone (reproducible, independent of the order things are computed)."""
    return np.random.default_rng([20240531, zlib.crc32(name.encode())])


def tq(df: float) -> float:
    """The one-sided 95 % quantile of Student's t with df degrees of freedom (the normal's for df = inf)."""
    return float(st.norm.ppf(1 - ALPHA) if math.isinf(df) else st.t.ppf(1 - ALPHA, df))


def welch(parts) -> tuple[float, float]:
    """(standard error, degrees of freedom) of a sum of independent errors given as (variance, df)
    pairs (Welch-Satterthwaite; df = inf for a known variance)."""
    parts = [(v, df) for v, df in parts if v is not None]
    var = sum(v for v, _ in parts)
    if var <= 0:
        return 0.0, math.inf
    denom = sum(v * v / df for v, df in parts if not math.isinf(df) and v > 0)
    return math.sqrt(var), (var * var / denom if denom > 0 else math.inf)


def interval(center: float, se: float, df: float) -> tuple[float, float]:
    """The 90 % t-interval center ± tq(df) * se."""
    h = tq(df) * se
    return center - h, center + h


def judge(lo: float, hi: float, tol: float, n: int, higher_is_better: bool = True) -> str:
    """The verdict of an interval [lo, hi] of delta = ours − published against the band ± tol:
    "reproduced" when it lies inside the band and n ≥ 2 (one seed never shows equivalence), "below" /
    "above" when it lies wholly beyond one edge (worse / better than published; for error tables a
    larger delta is worse), else "inconclusive"."""
    if lo >= -tol - EPS and hi <= tol + EPS:
        return "reproduced" if n >= 2 else "inconclusive"
    if hi < -tol - EPS or lo > tol + EPS:
        better = (lo > 0) == higher_is_better
        return "above" if better else "below"
    return "inconclusive"


def binomial_sd(p_percent: float, n_test: int) -> float:
    """The standard deviation (points) of one accuracy measured on n_test examples: sqrt(p(1-p)/N)."""
    p = min(max(p_percent / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(p * (1 - p) / n_test)


def seeds_to_settle(delta: float, sd: float, n: int, pub_var: float, pub_df: float, tol: float,
                    cap: int = 1000) -> int | None:
    """How many more seeds would settle an inconclusive entry if our mean and per-seed std `sd` (for
    n = 1 a stand-in) stayed as measured: the fewest extra seeds whose interval lies inside ± tol or
    wholly beyond it; None when no number up to `cap` does (the published number's own error, or a
    delta on the band's edge)."""
    for m in range(max(n, 1) + 1, cap + 1):
        se, df = welch([(sd * sd / m, m - 1), (pub_var, pub_df)])
        if judge(*interval(delta, se, df), tol, m) != "inconclusive":
            return m - n
    return None


def t_draws(df: float, gen: np.random.Generator, k: int = DRAWS) -> np.ndarray:
    """k draws of Student's t (df degrees of freedom; the normal for df = inf), stratified: one in each
    of k equal-probability slices, in random order, so quantiles of few thousand draws are close to
    exact (a variance reduction; each draw still has the t distribution)."""
    u = (np.arange(k) + gen.random(k)) / k
    return gen.permutation(st.norm.ppf(u) if math.isinf(df) else st.t.ppf(u, df))


def mean_draws(values, gen: np.random.Generator, k: int = DRAWS, sd: float | None = None) -> np.ndarray | None:
    """k draws of the mean of `values` (one per seed): mean + s/sqrt(n) * T(n-1); with one value and a
    stand-in `sd`, mean + sd * Z; None without a spread."""
    v = np.asarray(values, dtype=float)
    if len(v) >= 2:
        return v.mean() + v.std(ddof=1) / math.sqrt(len(v)) * t_draws(len(v) - 1, gen, k)
    if len(v) == 1 and sd is not None:
        return v[0] + sd * t_draws(math.inf, gen, k)
    return None


def published_draws(value: float, std: float | None, runs: int | None, gen: np.random.Generator,
                    k: int = DRAWS) -> np.ndarray:
    """k draws of a published mean: value + std/sqrt(runs) * T(runs-1) where both are printed, else the
    value itself (treated as exact)."""
    if std and runs and runs >= 2:
        return value + std / math.sqrt(runs) * t_draws(runs - 1, gen, k)
    return np.full(k, float(value))


def example_draws(per_example: np.ndarray, gen: np.random.Generator, k: int = DRAWS,
                  chunk: int = 200) -> np.ndarray:
    """k bootstrap draws of the test-set sampling error of mean(per_example) (points), per column when
    `per_example` is (N, m): the examples resampled with replacement, the same examples for every
    column; centred on 0."""
    x = np.asarray(per_example, dtype=float)
    x = x[:, None] if x.ndim == 1 else x
    n = x.shape[0]
    out = np.empty((k, x.shape[1]))
    for a in range(0, k, chunk):
        idx = gen.integers(0, n, (min(chunk, k - a), n))
        out[a:a + len(idx)] = x[idx].mean(axis=1)
    out = 100.0 * (out - x.mean(axis=0))
    return out[:, 0] if np.ndim(per_example) == 1 else out


def percentile_interval(draws: np.ndarray) -> tuple[float, float]:
    """The central 90 % of the draws."""
    lo, hi = np.quantile(draws, [ALPHA, 1 - ALPHA])
    return float(lo), float(hi)


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> tuple[int, int, float]:
    """McNemar's exact test on paired per-example outcomes: (b, c, two-sided p), b = examples A gets
    right and B wrong, c the reverse. With several seeds (arrays of shape (seeds, N)), an example counts
    for A when A is right on more of the paired seeds than B (a sign test over examples, which are the
    independent units; one seed gives McNemar's test exactly)."""
    a, b = np.atleast_2d(a_correct), np.atleast_2d(b_correct)
    d = (a - b).sum(axis=0)
    nb, nc = int((d > 0).sum()), int((d < 0).sum())
    p = 1.0 if nb + nc == 0 else float(st.binomtest(nb, nb + nc, 0.5).pvalue)
    return nb, nc, p


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho between x[i] and y[i] for each row i (average ranks for ties); nan where constant."""
    rx, ry = st.rankdata(x, axis=1), st.rankdata(y, axis=1)
    rx, ry = rx - rx.mean(axis=1, keepdims=True), ry - ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(axis=1) / np.where(den > 0, den, 1), np.nan)


def seeds_for_power(gain: float, sigma: float, power: float = 0.8, alpha: float = ALPHA) -> int | None:
    """Seeds per method to resolve `gain` with per-seed std `sigma` (module docstring; at least 2, as
    one seed has no spread); None without a gain or a std."""
    if not gain or sigma is None:
        return None
    z = st.norm.ppf(1 - alpha / 2) + st.norm.ppf(power)
    return max(2, math.ceil(2 * z * z * sigma * sigma / (gain * gain) - EPS))

"""The one place where metrics are defined: training, export parity and the bench all use these,
so "RMSE" means the same thing everywhere."""

from __future__ import annotations

import numpy as np

from pipeline.data.sources.gaze import angular_error_deg
from pipeline.errors import NonFiniteError


def _pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if p.shape != t.shape:
        p = p.reshape(t.shape)
    return p, t


def rmse(pred, target) -> float:
    p, t = _pair(pred, target)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def mae(pred, target) -> float:
    p, t = _pair(pred, target)
    return float(np.mean(np.abs(p - t)))


def max_abs_diff(a, b) -> float:
    p, t = _pair(a, b)
    return float(np.max(np.abs(p - t))) if p.size else 0.0


def parity_bound(atol: float, ref) -> float:
    """The largest |diff| two float32 computations of ``ref`` may show: ``atol`` for outputs up to 1 in
    size, scaled by the largest |output| beyond (float32 carries ~7 significant digits: outputs in the
    hundreds, e.g. prices or degrees, differ by more than 1e-4 between runtimes at the last digit)."""
    r = np.asarray(ref, dtype=np.float64)
    return float(atol * max(1.0, float(np.abs(r).max()) if r.size else 1.0))


def regression_metrics(pred, target) -> dict[str, float]:
    return {"rmse": rmse(pred, target), "mae": mae(pred, target)}


COVERAGES = (1.0, 0.95, 0.9, 0.8, 0.7, 0.5)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _keep_order(abstain_score) -> np.ndarray:
    """Sample indices by rising abstention score (ties: lower index first): the order a selective
    predictor keeps them in."""
    order = np.argsort(np.asarray(abstain_score, dtype=np.float64).ravel(), kind="stable")
    if not len(order):
        raise ValueError("selective prediction needs at least one sample")
    return order


def kept_by_coverage(abstain_score, coverages=COVERAGES) -> list[tuple[float, np.ndarray]]:
    """For each coverage c in (0, 1]: the indices of the max(1, round(c * N)) samples with the lowest
    abstention score (ties: lower index first), the samples a selective predictor keeps."""
    order = _keep_order(abstain_score)
    out = []
    for c in coverages:
        if not 0 < c <= 1:
            raise ValueError(f"coverage must be in (0, 1], got {c}")
        out.append((float(c), order[: max(1, int(round(c * len(order))))]))
    return out


def _pct(c: float) -> str:
    return f"{round(c * 100):d}"


def selective_risk(correct: np.ndarray, abstain_score: np.ndarray, coverages=COVERAGES) -> dict[str, float]:
    """Error rate on the samples kept at each coverage (``kept_by_coverage``). Keys are percentages, e.g. "80"."""
    correct = np.asarray(correct, dtype=bool).ravel()
    return {_pct(c): float(1.0 - correct[kept].mean()) for c, kept in kept_by_coverage(abstain_score, coverages)}


def aurc(correct: np.ndarray, abstain_score: np.ndarray) -> float:
    """Area under the risk-coverage curve (Geifman et al., "Bias-reduced uncertainty estimation for
    deep neural classifiers", ICLR 2019): the mean, over k = 1..N, of the error rate on the k samples
    with the lowest abstention score (``_keep_order``). Lower is better; a perfect
    ranking of the same errors gives the smallest value, a random one about the error rate."""
    order = _keep_order(abstain_score)
    errors = np.cumsum(~np.asarray(correct, dtype=bool).ravel()[order])
    return float(np.mean(errors / np.arange(1, len(order) + 1)))


def classification_metrics(logits, labels, abstain: bool = False) -> dict:
    """Accuracy of (N, m) logits (an abstaining model has m + 1 outputs, the last = abstain), the
    error rate, and selective risk at the standard coverages: by softmax confidence always, and by
    the abstain output for an abstaining model; and the area under each risk-coverage curve (``aurc``)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    real = z[:, :-1] if abstain else z
    p = _softmax(real)
    correct = p.argmax(axis=1) == y
    doubt = 1.0 - p.max(axis=1)
    out = {"accuracy": float(correct.mean()), "error_rate": float(1.0 - correct.mean()),
           "risk_softmax": selective_risk(correct, doubt), "aurc_softmax": aurc(correct, doubt)}
    if abstain:
        out["risk_abstain"] = selective_risk(correct, _softmax(z)[:, -1])
        out["aurc_abstain"] = aurc(correct, _softmax(z)[:, -1])
    return out


def task_metrics(pred, target, task: str = "regression", abstain: bool = False, angles: bool = False,
                 names: list[str] | None = None) -> dict:
    """The metrics of ``task``: rmse/mae (regression) or accuracy/error_rate/selective risk (classification).

    Several regression outputs also get ``per_output`` RMSE/MAE (by name); (pitch, yaw) outputs
    (``angles``) get the mean angular error in degrees, the MPIIGaze metric."""
    if task == "classification":
        return classification_metrics(pred, target, abstain)
    t = np.asarray(target)
    t = t.reshape(len(t), -1)
    p = np.asarray(pred).reshape(len(t), -1)
    log_var = None
    if abstain:  # mean / log-variance student: k means, then k log-variances
        k = t.shape[1]
        p, log_var = p[:, :k], p[:, k : 2 * k]
    out = regression_metrics(p, t)
    if log_var is not None:  # abstain on the largest predicted variance
        err2 = ((p - t) ** 2).mean(axis=1)
        out["rmse_at_coverage"] = {_pct(c): float(np.sqrt(err2[kept].mean()))
                                   for c, kept in kept_by_coverage(log_var.mean(axis=1))}
    if t.shape[1] > 1:
        names = names if names and len(names) == t.shape[1] else [f"y{i}" for i in range(t.shape[1])]
        out["per_output"] = {n: regression_metrics(p[:, i], t[:, i]) for i, n in enumerate(names)}
        if angles:
            err = angular_error_deg(p[:, :2].astype(np.float64), t[:, :2].astype(np.float64))
            out["angular_error_deg"] = float(err.mean())
            out["angular_error_deg_median"] = float(np.median(err))
    return out


def minus_floor(results: list[dict]) -> list[dict]:
    """Bench rows of one target: add ``p50_minus_floor_ms`` to each model's row, its p50 minus the p50
    of the runtime floor (the one-ReLU ``floor`` row) of the same runtime, i.e. the model's compute
    with the per-call overhead of Python and the runtime taken out (None without such a floor row)."""
    floors = {r.get("runtime"): r["latency_ms"]["p50"] for r in results if r["model"] == "floor"}
    for r in results:
        if r["model"] != "floor":
            floor = floors.get(r.get("runtime"))
            r["p50_minus_floor_ms"] = r["latency_ms"]["p50"] - floor if floor is not None else None
    return results


def require_finite(arr, where: str, hint: str = "", error: type[Exception] | None = None) -> None:
    """Stop where a non-finite value enters: ``error`` (default ``NonFiniteError``, one line, exit 2)
    naming ``where``, how many values and the first one's index."""
    a = np.asarray(arr)
    if a.dtype.kind not in "fc" or a.size == 0:
        return
    bad = ~np.isfinite(a)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise (error or NonFiniteError)(
            f"{where}: {int(bad.sum())} of {a.size} values are NaN or infinite (first at index "
            f"{first[0] if len(first) == 1 else first}){'; ' + hint if hint else ''}")

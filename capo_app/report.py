"""What ``capo train`` leaves behind: the JSON log, the summary table and the PNG plots.

The log is one JSON object::

    {"summary": {...},                 # see :func:`summarize`
     "run": {...},                     # method, model, dataset, the resolved configuration
     "history": [{"step": 1, "completions": 32, "reward": 0.4, "capo/rejection_rate": 0.01, ...}, ...],
     "test_accuracy": [{"step": 0, "completions": 0, "accuracy": 0.3}, ...]}

``history`` holds every metric TRL logged at every logging step (TRL's and CAPOTrainer's metric stream: the
same numbers TensorBoard / W&B would receive). Non-finite numbers are written as ``null``. The plots read only
this object, so they can be redrawn from a saved ``log.json`` with :func:`capo_app.plots.plot_log`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from capo import metrics

#: Keys TRL writes once at the end of ``train()`` (not a per-step metric).
_END_OF_TRAINING_KEYS = (
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "train_loss",
)

REJECTION = metrics.REJECTION_RATE
REJECTION_HESSIAN = metrics.REJECTION_RATE_HESSIAN
REJECTION_FISHER = metrics.REJECTION_RATE_FISHER
COMPLETIONS = metrics.COMPLETIONS_SEEN
TRUE_KL = metrics.TRUE_KL
KL_SCALE = metrics.KL_SCALE
KL_LOOKAHEADS = metrics.KL_LOOKAHEADS
REWARD = "reward"

_STAT_ORDER = ("mean", "p50", "p99", "max", "min")


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def history_from_log_history(
    log_history: Iterable[Mapping[str, Any]], completions_per_step: int | None = None
) -> list[dict[str, Any]]:
    """Turn ``trainer.state.log_history`` into one record per logged step, with a ``completions`` count.

    Args:
        log_history: TRL's list of logged dicts (each has ``step``).
        completions_per_step: Used for ``completions`` when the trainer did not log ``capo/completions_seen``.

    Returns:
        Records sorted by step; entries of the same step are merged; the end-of-training entry is dropped.
    """
    by_step: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        if "step" not in entry or any(k in entry for k in _END_OF_TRAINING_KEYS):
            continue
        step = int(entry["step"])
        record = by_step.setdefault(step, {"step": step})
        for key, value in entry.items():
            if key != "step":
                record[key] = value
    history = [by_step[s] for s in sorted(by_step)]
    for record in history:
        seen = _finite(record.get(COMPLETIONS))
        if seen is not None:
            record["completions"] = int(seen)
        elif completions_per_step is not None:
            record["completions"] = record["step"] * completions_per_step
    return history


def series(
    history: Sequence[Mapping[str, Any]], key: str, x: str = "step"
) -> tuple[list[float], list[float]]:
    """Return ``(xs, ys)`` of a metric over the history, skipping records where it is absent or not finite."""
    xs, ys = [], []
    for record in history:
        y, xv = _finite(record.get(key)), _finite(record.get(x))
        if y is not None and xv is not None:
            xs.append(xv)
            ys.append(y)
    return xs, ys


def _first_last(
    history: Sequence[Mapping[str, Any]], key: str
) -> tuple[float | None, float | None]:
    _, ys = series(history, key)
    return (ys[0], ys[-1]) if ys else (None, None)


def curvature_keys(history: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """The m_H / m_F metric names CAPOTrainer logged, grouped for plotting.

    Args:
        history: The per-step records.

    Returns:
        ``{"token_m_H": {"mean": "capo/m_H/mean", "p50": ..., "p99": ..., "max": ...}, "token_m_F": {...},
        "global": {"m_H": "capo/global_m_H", "m_F": "capo/global_m_F"}}``, holding only the names present.
    """
    present = {k for r in history for k in r}
    out: dict[str, dict[str, str]] = {"token_m_H": {}, "token_m_F": {}, "global": {}}
    for kind, prefix, total in (
        ("m_H", metrics.M_H, metrics.GLOBAL_M_H),
        ("m_F", metrics.M_F, metrics.GLOBAL_M_F),
    ):
        for stat in _STAT_ORDER:
            name = f"{prefix}/{stat}"
            if name in present:
                out[f"token_{kind}"][stat] = name
        if total in present:
            out["global"][kind] = total
    return out


def summarize(
    history: Sequence[Mapping[str, Any]],
    test_accuracy: Sequence[Mapping[str, Any]] = (),
    *,
    method: str | None = None,
    wall_time_s: float | None = None,
    granularity: str = "token",
    masking: bool = True,
    unmodelled: Sequence[str] = (),
) -> dict[str, Any]:
    """The run's headline numbers.

    Args:
        history: Per-step records from :func:`history_from_log_history`.
        test_accuracy: ``{"step", "completions", "accuracy"}`` points; the first is "before", the last "after".
        method: Method name for the table.
        wall_time_s: Wall time of the whole command.
        granularity: What the acceptance test accepts or rejects (token, completion, group, batch).
        masking: Whether rejected units were masked; without masking (shift tracking) the rates are what CAPO
            would reject.
        unmodelled: The TRL options the step model leaves out of this run (:func:`capo.trl_options.unmodelled`).

    Returns:
        A flat dict of numbers (text only in :func:`format_summary_table`): ``method``, ``steps``,
        ``completions``, ``test_accuracy_before`` / ``_after`` (greedy), ``test_sampled_before`` / ``_after``
        with their ``_se`` and ``test_sampled_temperature`` / ``_k``, ``train_reward_first`` / ``_last``, ``rejection_rate_peak`` / ``_final`` / ``_mean`` (and the peaks per
        criterion), ``global_m_F_peak``, ``true_kl_peak``, the KL budget's ``kl_scale_min`` / ``_median`` and
        ``kl_steps_scaled`` of ``kl_steps`` and its ``kl_lookaheads`` (forwards, all steps), ``wall_time_s``; None where not measured.
    """
    accuracies = [p for p in test_accuracy if _finite(p.get("accuracy")) is not None]
    _, rejection = series(history, REJECTION)
    reward_first, reward_last = _first_last(history, REWARD)
    steps = max((int(r["step"]) for r in history), default=0)
    completions = max((int(r["completions"]) for r in history if "completions" in r), default=None)
    global_keys = curvature_keys(history)["global"]
    _, global_mf = series(history, global_keys["m_F"]) if "m_F" in global_keys else ([], [])
    _, true_kl = series(history, TRUE_KL)
    _, hess = series(history, REJECTION_HESSIAN)
    _, fish = series(history, REJECTION_FISHER)
    return {
        "method": method,
        "steps": steps,
        "completions": completions,
        "test_accuracy_before": accuracies[0]["accuracy"] if accuracies else None,
        "test_accuracy_after": accuracies[-1]["accuracy"] if len(accuracies) > 1 else None,
        **_sampled(test_accuracy),
        "train_reward_first": reward_first,
        "train_reward_last": reward_last,
        "rejection_rate_peak": max(rejection) if rejection else None,
        "rejection_rate_final": rejection[-1] if rejection else None,
        "rejection_rate_mean": sum(rejection) / len(rejection) if rejection else None,
        "rejection_rate_hessian_peak": max(hess) if hess else None,
        "rejection_rate_fisher_peak": max(fish) if fish else None,
        "global_m_F_peak": max(global_mf) if global_mf else None,
        "true_kl_peak": max(true_kl) if true_kl else None,
        **_kl_scale_stats(history),
        "unmodelled_options": ", ".join(unmodelled) or None,
        "wall_time_s": wall_time_s,
        "granularity": granularity,
        "masking": masking,
    }


def _kl_scale_stats(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The KL budget's lr scale: min, median and the steps it scaled (None when no step was scaled)."""
    _, scale = series(history, KL_SCALE)
    if not scale or min(scale) >= 1.0:
        return {
            "kl_scale_min": None,
            "kl_scale_median": None,
            "kl_steps_scaled": None,
            "kl_steps": None,
            "kl_lookaheads": None,
        }
    ordered = sorted(scale)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return {
        "kl_scale_min": min(scale),
        "kl_scale_median": median,
        "kl_steps_scaled": sum(s < 1.0 for s in scale),
        "kl_lookaheads": sum(series(history, KL_LOOKAHEADS)[1]) or None,
        "kl_steps": len(scale),
    }


def _sampled(points: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The first and last sampled accuracy, its Monte Carlo SE, and the (T, k) it was measured at; None if not."""
    sampled = [p for p in points if _finite(p.get("sampled")) is not None]
    first = sampled[0] if sampled else None
    last = sampled[-1] if len(sampled) > 1 else None
    return {
        "test_sampled_before": first["sampled"] if first else None,
        "test_sampled_before_se": first["sampled_se"] if first else None,
        "test_sampled_after": last["sampled"] if last else None,
        "test_sampled_after_se": last["sampled_se"] if last else None,
        "test_sampled_temperature": sampled[0]["temperature"] if sampled else None,
        "test_sampled_k": sampled[0]["k"] if sampled else None,
    }


def _sampled_text(summary: Mapping[str, Any], when: str) -> str:
    """The text "mean ± SE (T, k)" of the sampled accuracy ``when`` ("before" or "after")."""
    mean, se = summary[f"test_sampled_{when}"], summary[f"test_sampled_{when}_se"]
    return f"{mean:.1%} ± {se:.1%} (T {summary['test_sampled_temperature']:g}, k {summary['test_sampled_k']})"


_ROWS = (
    ("method", "method", "{}"),
    ("optimizer steps", "steps", "{}"),
    ("resumed at", "resumed_from", "{}"),
    ("completions generated", "completions_generated", "{:,}"),
    ("completions trained on", "completions", "{:,}"),
    ("test accuracy, sampled before", "test_sampled_before", lambda s: _sampled_text(s, "before")),
    ("test accuracy, sampled after", "test_sampled_after", lambda s: _sampled_text(s, "after")),
    ("test accuracy, greedy before", "test_accuracy_before", "{:.1%}"),
    ("test accuracy, greedy after", "test_accuracy_after", "{:.1%}"),
    ("train reward first step", "train_reward_first", "{:.3f}"),
    ("train reward last step", "train_reward_last", "{:.3f}"),
    ("token rejection rate, peak", "rejection_rate_peak", "{:.2%}"),
    ("token rejection rate, final", "rejection_rate_final", "{:.2%}"),
    ("token rejection rate, mean", "rejection_rate_mean", "{:.2%}"),
    ("  rejected by Hessian, peak", "rejection_rate_hessian_peak", "{:.2%}"),
    ("  rejected by Fisher, peak", "rejection_rate_fisher_peak", "{:.2%}"),
    ("global m_F, peak", "global_m_F_peak", "{:.3g}"),
    ("true KL per step, peak", "true_kl_peak", "{:.3g}"),
    ("KL budget lr scale, min", "kl_scale_min", "{:.3g}"),
    ("KL budget lr scale, median", "kl_scale_median", "{:.3g}"),
    ("  steps scaled", "kl_steps_scaled", lambda s: f"{s['kl_steps_scaled']} of {s['kl_steps']}"),
    ("  lookahead forwards", "kl_lookaheads", "{:.0f}"),
    ("step model leaves out", "unmodelled_options", "{}"),
    ("wall time (after imports)", "wall_time_s", "{:.0f} s"),
)


def rejection_label(label: str, summary: Mapping[str, Any]) -> str:
    """A row label with the run's granularity, and "would reject" when nothing was masked (shift tracking)."""
    unit = str(summary.get("granularity") or "token")
    if not label.startswith("token rejection rate"):
        return label
    what = (
        f"{unit} rejection rate" if summary.get("masking", True) else f"{unit}s CAPO would reject"
    )
    return what + label[len("token rejection rate") :]


def format_summary_table(summary: Mapping[str, Any], title: str = "capo train: summary") -> str:
    """Render the summary as a two-column text table (rows with no value are left out)."""
    rows = []
    for label, key, fmt in _ROWS:
        value = summary.get(key)
        if value is None:
            continue
        text = fmt.format(value) if isinstance(fmt, str) else fmt(summary)
        rows.append((rejection_label(label, summary), text))
    width = max((len(label) for label, _ in rows), default=10)
    value_width = max((len(v) for _, v in rows), default=5)
    rule = "-" * (width + value_width + 3)
    lines = [
        title,
        rule,
        *(f"{label:<{width}} | {value:>{value_width}}" for label, value in rows),
        rule,
    ]
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return _json_safe(item())
        except (TypeError, ValueError):
            pass
    return str(value)


def write_log(path: str | os.PathLike[str], log: Mapping[str, Any]) -> Path:
    """Write the log as strict JSON (non-finite numbers as null); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(_json_safe(log), indent=2, allow_nan=False) + "\n")
    return target


def read_log(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``log.json`` written by :func:`write_log`."""
    return dict(json.loads(Path(path).read_text()))

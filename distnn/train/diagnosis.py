"""Bias/variance diagnosis: is the model underfitting or overfitting?"""
from __future__ import annotations

REMEDIES = {
    "high bias": "underfitting: a bigger network (more or wider hidden layers), train "
                 "longer, a better optimizer or learning rate, less regularisation",
    "high variance": "overfitting: more training data (or --augment), more regularisation "
                     "(--l2, --keep-prob, --max-norm), early stopping, a smaller network",
    "balanced": "training and validation errors are both close to the Bayes error",
}


def diagnose(train_error: float, valid_error: float, bayes_error: float = 0.0,
             tolerance: float = 0.005) -> dict:
    """Avoidable bias = train - Bayes error; variance = valid - train error.  The larger
    (when above ``tolerance``) names the problem."""
    bias, variance = train_error - bayes_error, valid_error - train_error
    if max(bias, variance) <= tolerance:
        verdict = "balanced"
    else:
        verdict = "high bias" if bias >= variance else "high variance"
    return {"train_error": train_error, "valid_error": valid_error,
            "bayes_error": bayes_error, "avoidable_bias": bias, "variance": variance,
            "verdict": verdict, "remedies": REMEDIES[verdict]}


def format_diagnosis(d: dict) -> str:
    """One line; a validation error below the training error is no measurable variance
    (not a negative one), a training error below the Bayes error no avoidable bias."""
    def gap(name, value):
        return f"{name} {100 * value:.2f} points" if value > 0 else f"no measurable {name}"
    return (f"diagnosis: training error {100 * d['train_error']:.2f}%, validation error "
            f"{100 * d['valid_error']:.2f}%, Bayes error {100 * d['bayes_error']:.2f}% -> "
            f"{d['verdict']} ({gap('avoidable bias', d['avoidable_bias'])}, "
            f"{gap('variance', d['variance'])}): {d['remedies']}")


def from_history(history: list[dict], best_epoch=None, bayes_error: float = 0.0):
    """Diagnose the epoch whose parameters the run ended with (the best one when early
    stopping restored it); None without training and validation accuracy."""
    if not history:
        return None
    entry = next((h for h in history if h["epoch"] == best_epoch), history[-1])
    if entry.get("train_accuracy") is None or entry.get("valid_accuracy") is None:
        return None
    return diagnose(1 - entry["train_accuracy"], 1 - entry["valid_accuracy"], bayes_error)

"""``ClassDRO``: DoReMi's Group-DRO weight update as a small, pure state machine (numpy float64).

One update, for K classes with current weights ``a`` (a point of the simplex) and per-class scores ``lam``:

    lam_k  <- excess_k            for classes present in the batch (absent classes keep their last score)
    log a  <- log a + eta * lam   (exponentiated-gradient step, in log space)
    a      <- softmax(log a)      (log-sum-exp renormalisation)
    a      <- (1 - c) a + c / K   (smoothing toward uniform; keeps every a_k >= c / K)

``average`` is the running mean of the weights over all updates *including the initial weights*, which is
what DoReMi outputs (its ``avg_domain_weights`` start from the initial weights with ``update_counter = 1``).
The clipping of the excess loss (max(l_proxy - l_ref, 0)) happens per pixel before the per-class mean, so
it belongs to the caller (see ``diffprune.reweighting.excess``), not to this class.
"""
from __future__ import annotations

from typing import Any

import numpy as np


class DROStateError(ValueError):
    """Bad input to ``ClassDRO`` (shape, value or state dict); the message names the problem and the fix."""


def _logsumexp(x: np.ndarray) -> float:
    m = float(np.max(x))
    return m + float(np.log(np.sum(np.exp(x - m))))


class ClassDRO:
    """Exponentiated-gradient class weights (DoReMi v1 update) with smoothing toward uniform.

    Args:
        num_classes: K >= 1.
        eta: step size of the exponentiated-gradient update (DoReMi: 1.0). Must be >= 0.
        smoothing: c in [0, 1); after every update each weight is at least c / K (DoReMi paper: 1e-3).
        init: initial weights, K non-negative numbers (normalised to sum to 1); uniform when None.
        initial_score: the score of a class before its first appearance in a batch. DoReMi uses log(vocab),
            an upper bound of its loss; for diffusion excess losses 0 ("no evidence yet") is the neutral choice.

    Attributes:
        weights: current weights, float64 K, sums to 1.
        average: mean of the initial weights and the weights after every update, float64 K.
        scores: the per-class scores used by the last update, float64 K.
        num_updates: number of ``update`` calls so far.
    """

    def __init__(
        self,
        num_classes: int,
        eta: float = 1.0,
        smoothing: float = 1e-3,
        init: np.ndarray | None = None,
        initial_score: float = 0.0,
    ) -> None:
        if int(num_classes) != num_classes or num_classes < 1:
            raise DROStateError(f"num_classes must be a positive integer, got {num_classes!r}")
        if not np.isfinite(eta) or eta < 0:
            raise DROStateError(f"eta must be a finite number >= 0 (DoReMi uses 1.0), got {eta!r}")
        if not (0.0 <= smoothing < 1.0):
            raise DROStateError(f"smoothing must lie in [0, 1) (DoReMi uses 1e-3), got {smoothing!r}")
        if not np.isfinite(initial_score):
            raise DROStateError(f"initial_score must be finite, got {initial_score!r}")
        self.num_classes = int(num_classes)
        self.eta = float(eta)
        self.smoothing = float(smoothing)
        self.initial = self._check_init(init)
        self.weights = self.initial.copy()
        self.scores = np.full(self.num_classes, float(initial_score), dtype=np.float64)
        self.average = self.initial.copy()
        self.num_updates = 0
        self._history: list[np.ndarray] = []
        self._score_history: list[np.ndarray] = []

    def _check_init(self, init: np.ndarray | None) -> np.ndarray:
        k = self.num_classes
        if init is None:
            return np.full(k, 1.0 / k, dtype=np.float64)
        a = np.asarray(init, dtype=np.float64)
        if a.shape != (k,):
            raise DROStateError(f"init must hold {k} weights (one per class), got shape {a.shape}")
        if not np.all(np.isfinite(a)) or np.any(a < 0) or a.sum() <= 0:
            raise DROStateError("init must hold finite, non-negative weights with a positive sum")
        a = a / a.sum()
        if np.any(a == 0):
            raise DROStateError(
                "init has a zero weight; the update works in log space, so give every class a positive weight"
            )
        return a

    def update(self, excess: np.ndarray, present: np.ndarray) -> np.ndarray:
        """One DRO step.

        Args:
            excess: float K, the per-class (already clipped) excess loss of this step. Entries of absent
                classes are ignored (may be NaN).
            present: bool K, which classes had examples in the step; the others keep their previous score.

        Returns:
            The new weights (float64 K, a copy).
        """
        k = self.num_classes
        excess = np.asarray(excess, dtype=np.float64)
        present = np.asarray(present)
        if excess.shape != (k,) or present.shape != (k,):
            raise DROStateError(
                f"excess and present must both have shape ({k},), got {excess.shape} and {present.shape}"
            )
        if present.dtype != np.bool_:
            raise DROStateError(f"present must be a boolean mask, got dtype {present.dtype}")
        if not np.all(np.isfinite(excess[present])):
            raise DROStateError(
                "excess holds NaN or inf for a present class; check the proxy's loss (diverged training?)"
            )
        self.scores = np.where(present, excess, self.scores)
        with np.errstate(divide="ignore"):  # a weight of exactly 0 (smoothing=0) stays at 0
            logits = np.log(self.weights) + self.eta * self.scores
        logits -= _logsumexp(logits)
        weights = (1.0 - self.smoothing) * np.exp(logits) + self.smoothing / k
        # exp of a renormalised log-vector sums to 1 up to rounding; remove the rounding so that sums are exact
        # enough for downstream validators (sum within 1e-12).
        self.weights = weights / weights.sum()
        self.num_updates += 1
        self.average = self.average + (self.weights - self.average) / (self.num_updates + 1)
        self._history.append(self.weights.copy())
        self._score_history.append(self.scores.copy())
        return self.weights.copy()

    @property
    def history(self) -> np.ndarray:
        """float64 S x K: the weights after each of the S updates (the initial weights are ``initial``)."""
        if not self._history:
            return np.zeros((0, self.num_classes))
        return np.stack(self._history)

    @property
    def score_history(self) -> np.ndarray:
        """float64 S x K: the per-class scores each update used (absent classes: their carried-over score)."""
        if not self._score_history:
            return np.zeros((0, self.num_classes))
        return np.stack(self._score_history)

    def state_dict(self) -> dict[str, Any]:
        """Plain numpy arrays and floats (no pickled objects): safe for ``np.savez`` / ``np.load``."""
        return {
            "num_classes": np.int64(self.num_classes),
            "eta": np.float64(self.eta),
            "smoothing": np.float64(self.smoothing),
            "initial": self.initial.copy(),
            "weights": self.weights.copy(),
            "scores": self.scores.copy(),
            "average": self.average.copy(),
            "num_updates": np.int64(self.num_updates),
            "history": self.history,
            "score_history": self.score_history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``; the number of classes must match, eta and smoothing are taken from it."""
        missing = {"num_classes", "eta", "smoothing", "initial", "weights", "scores", "average", "num_updates",
                   "history", "score_history"} - set(state)
        if missing:
            raise DROStateError(f"DRO state is missing {sorted(missing)}; was it written by ClassDRO.state_dict()?")
        k = int(state["num_classes"])
        if k != self.num_classes:
            raise DROStateError(f"DRO state has {k} classes but this ClassDRO has {self.num_classes}")
        n = int(state["num_updates"])
        history = np.asarray(state["history"], dtype=np.float64).reshape(-1, k)
        score_history = np.asarray(state["score_history"], dtype=np.float64).reshape(-1, k)
        if len(history) != n or len(score_history) != n:
            raise DROStateError(f"DRO state is inconsistent: {n} updates but {len(history)} history rows")
        self.eta = float(state["eta"])
        self.smoothing = float(state["smoothing"])
        self.initial = np.asarray(state["initial"], dtype=np.float64).copy()
        self.weights = np.asarray(state["weights"], dtype=np.float64).copy()
        self.scores = np.asarray(state["scores"], dtype=np.float64).copy()
        self.average = np.asarray(state["average"], dtype=np.float64).copy()
        self.num_updates = n
        self._history = list(history)
        self._score_history = list(score_history)

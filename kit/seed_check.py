"""Whether a train.py's result depends on the seed the frozen side gives it.

The loop runs a near miss again under new seeds so that a lucky draw is found out. An edit that fixes its own
generator state (reseeding through any API, a data loader of its own, a saved state) would make every re-run the
same draw, and a lucky one would be confirmed by itself. Such an edit is recognised by what its models predict, not
by how it did it: every evaluated model leaves its signature, its per-token losses on the first evaluation batch
(kit/evaluate.py), and two runs of one train.py under different seeds differ about as much as the baseline's
noise-floor runs differ from each other. A re-run whose signature is closer to an earlier run of the same code than
SAME_SHARE of that (before the noise floor has two signatures: closer than ABSOLUTE_NATS) ignored its seed.

Owns: the distance between signatures and the verdict. Does not own: making them (kit/evaluate.py, kit/harness.py)
or acting on the verdict (kit/loop.py).
"""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path

import numpy as np

SIGNATURE_FILE = "token_losses.json"  # written by the harness into each run directory it evaluated
SAME_SHARE = 0.25
"""A re-run this close to an earlier run, as a share of the typical distance between noise-floor runs, ignored its
seed."""
ABSOLUTE_NATS = 0.01
"""Mean absolute difference of per-token losses (nats) below which two runs predict the same, when there is no
noise floor to compare with."""


def signature(run_dir: Path) -> np.ndarray | None:
    """The per-token losses of the model a run directory's evaluation saw, if it has them."""
    path = Path(run_dir) / SIGNATURE_FILE
    try:
        return np.asarray(json.loads(path.read_text()), dtype=np.float64)
    except (OSError, ValueError):
        return None


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two signatures' per-token losses (nats)."""
    n = min(len(a), len(b))
    return float(np.mean(np.abs(a[:n] - b[:n]))) if n else float("inf")


def typical_distance(signatures: list[np.ndarray]) -> float | None:
    """The median distance between pairs of runs of one train.py under different seeds (the noise floor's)."""
    pairs = [distance(a, b) for a, b in itertools.combinations(signatures, 2)]
    return statistics.median(pairs) if pairs else None


def seed_ignored(new: np.ndarray | None, earlier: list[np.ndarray], typical: float | None) -> str | None:
    """Why a run of a train.py under a new seed shows that its result does not depend on the seed, or None."""
    if new is None or not earlier:
        return None
    limit = SAME_SHARE * typical if typical is not None else ABSOLUTE_NATS
    closest = min(distance(new, old) for old in earlier)
    if closest >= limit:
        return None
    against = (f"{typical:.4f} between the baseline's noise-floor runs" if typical is not None
               else "no noise floor to compare with")
    return (f"its result does not depend on the seed: under a new seed its model predicts what an earlier run's did "
            f"(per-token losses {closest:.5f} nats apart on average, against {against}); the seed belongs to the "
            "frozen side")

"""What a catalog policy edits next, so that no experiment is run twice and edits combine.

Owns: the mask of catalog edits that would run code never run before, and the choice of the train.py to edit: the
incumbent while it has such edits, then the best train.py not kept that still has some (a near miss, say), so the
search moves on to combinations instead of proposing duplicates.
Does not own: the catalog or applying edits (kit/edits.py), what has run (kit/run_state.py).
"""

from __future__ import annotations

import statistics

import numpy as np

from kit import edits
from kit.memory import code_hash
from kit.run_state import RunState, runs_of


class Frontier:
    """The catalog's neighbourhoods of the train.py files a run has met, each parsed once."""

    def __init__(self, catalog: list[edits.Edit]):
        self.catalog = catalog
        self._neighbours: dict[str, list[str | None]] = {}  # code hash -> each edit's result's code hash

    def neighbours(self, source: str) -> list[str | None]:
        """The code hash of what each catalog edit makes of source (None where it does not apply)."""
        key = code_hash(source)
        if key not in self._neighbours:  # one parse per edit, once per train.py a policy is shown
            applies = edits.edit_mask(source, self.catalog)
            self._neighbours[key] = [code_hash(edits.apply_edit(source, e)) if ok else None
                                     for e, ok in zip(self.catalog, applies, strict=True)]
        return self._neighbours[key]

    def untried(self, source: str, state: RunState) -> np.ndarray:
        """Catalog edits of source that apply and would run code never run before."""
        return np.array([h is not None and not state.memory.is_duplicate(h) for h in self.neighbours(source)])

    def base(self, incumbent: str, state: RunState) -> tuple[str, str, np.ndarray]:
        """The train.py to edit, what it is ("" for the incumbent), and the mask of its edits not yet run."""
        mask = self.untried(incumbent, state)
        if mask.any():
            return incumbent, "", mask
        kept = code_hash(incumbent)
        ranked = sorted((statistics.fmean(runs_of(state.records, digest)), digest) for digest in state.sources
                        if digest != kept)
        for _, digest in ranked:
            source, description = state.sources[digest]
            if (untried := self.untried(source, state)).any():
                return source, description, untried
        return incumbent, "", edits.edit_mask(incumbent, self.catalog)  # all tried: duplicates it is

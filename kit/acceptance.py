"""When the loop keeps an edit: means of runs under different seeds, compared with the noise between seeds.

One run of train.py is one draw: under another seed the same code ends up to a few hundredths of a bpb away. The
loop therefore keeps a candidate only if the mean of its runs beats the mean of the incumbent's runs by
`sigmas` noise standard deviations, scaled by how many runs each mean has (the standard error of a difference of
two means; a single run against a single run needs exactly `sigmas` standard deviations). A candidate whose first
run comes close (a near miss) is run again under new seeds, up to `max_runs` runs, instead of being thrown away:
the noise shrinks as 1/√n, so a real gain smaller than the single-run margin can still be confirmed, and a lucky
draw is usually found out.

Owns: the margin and the verdict after each run. Does not own: the runs it judges (kit/run_state.py applies the rule
to a run directory's records) or running anything (kit/loop.py).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from enum import Enum


class Verdict(Enum):
    KEEP = "keep"
    AGAIN = "again"  # a near miss: run the candidate once more under a new seed
    DROP = "drop"


def margin(sigma: float, sigmas: float, runs: int, incumbent_runs: int) -> float:
    """How far below the incumbent's mean the candidate's mean must lie: sigmas × sigma × √((1/n + 1/m) / 2)."""
    if runs < 1 or incumbent_runs < 1:
        raise ValueError(f"need at least one run on each side, got {runs=}, {incumbent_runs=}")
    return sigmas * sigma * math.sqrt((1 / runs + 1 / incumbent_runs) / 2)


@dataclass(frozen=True)
class Acceptance:
    sigma: float
    """Standard deviation of val_bpb between seeds of one train.py (the noise floor)."""
    sigmas: float = 2.0
    """How many (scaled) noise deviations a kept candidate must beat the incumbent by."""
    max_runs: int = 3
    """Most runs a candidate gets: the first plus max_runs - 1 confirmations of a near miss."""

    def __post_init__(self) -> None:
        if not (self.sigma >= 0 and self.sigmas >= 0 and self.max_runs >= 1):
            raise ValueError(f"need sigma >= 0, sigmas >= 0 and max_runs >= 1, got {self.sigma=}, {self.sigmas=}, "
                             f"{self.max_runs=}")

    def bar(self, incumbent: list[float], runs: int) -> float:
        """The mean val_bpb a candidate with `runs` runs must end below to be kept."""
        return statistics.fmean(incumbent) - margin(self.sigma, self.sigmas, runs, len(incumbent))

    def retry_bar(self, incumbent: list[float]) -> float:
        """A run ending below this could still be kept with all max_runs runs, if the others landed as well: the
        least a first run must reach to be worth anything (the early stopper's bar)."""
        return self.bar(incumbent, self.max_runs)

    def verdict(self, candidate: list[float], incumbent: list[float]) -> Verdict:
        """What to do after the candidate's runs so far (val_bpb of each that ended ok)."""
        if not candidate:
            return Verdict.DROP
        mean = statistics.fmean(candidate)
        if mean < self.bar(incumbent, len(candidate)):
            return Verdict.KEEP
        if len(candidate) < self.max_runs and mean < self.retry_bar(incumbent):
            return Verdict.AGAIN
        return Verdict.DROP

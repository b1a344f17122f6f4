"""What the agent remembers of past experiments: a window of the most recent, the best so far, every code hash.

Owns: the normalized-code hash used for duplicate detection, the `Experiment` summary of one run, the sliding
window of the `recent` latest experiments (by index), the `best` lowest val_bpb among `ok` runs, the fixed-length
observation vector that policies see, the prompt text for language-model policies, and a JSON-safe dict for resume.
Does not own: storage of full records (kit.ledger), the reward (kit.reward), or the config vector (kit.edits).
"""

from __future__ import annotations

import ast
import bisect
import functools
import hashlib
import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from kit.results import Status

# a contended run was never judged and never enters the memory (kit/run_state.py), so it has no share of its own
STATUSES = tuple(status.value for status in Status if status is not Status.CONTENDED)
REWARD_HISTORY = 8  # rewards of the latest experiments in the observation
OBSERVATION_NAMES = (
    "has_ok",  # 1 once an ok run exists
    "best_rel",  # tanh(scale * log(best val_bpb / first ok val_bpb)): negative is better
    "last_rel",  # the same for the most recent ok run
    *(f"reward_{i}" for i in range(-REWARD_HISTORY, 0)),  # latest rewards, newest last, 0 before there are any
    *(f"frac_{status}" for status in STATUSES),  # share of each status in the recent window
    "frac_accepted",  # share of accepted experiments in the recent window
    "since_improvement",  # experiments after the one that set the best (all of them without an ok run) / patience
    "count",  # experiments seen, n / (n + patience)
)
_REWARD_CLIP = 5.0
_DESCRIPTION_WIDTH = 72


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


@functools.lru_cache(maxsize=256)  # the loop hashes each candidate twice (duplicate check, then the record)
def code_hash(source: str) -> str:
    """sha256 of the normalized code: the AST without docstrings, so comments, layout and docstrings do not count.

    Source that does not parse is hashed as text with trailing whitespace and blank lines removed
    (the gate rejects it anyway; its hash only has to be stable).
    """
    try:
        normalized = "ast:" + ast.dump(_strip_docstrings(ast.parse(source)))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        lines = (line.rstrip() for line in source.splitlines())
        normalized = "text:" + "\n".join(line for line in lines if line)
    return hashlib.sha256(normalized.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Experiment:
    """One finished experiment as memory keeps it (the ledger keeps the full record)."""

    index: int  # the loop's iteration number; "recent" means highest index
    code_hash: str  # code_hash() of the train.py that ran
    description: str  # one line: what was changed
    status: str  # a kit.results.Status value
    val_bpb: float | None  # None when the run produced no metric
    reward: float  # kit.reward total
    accepted: bool  # kept as the new incumbent
    config: tuple[float, ...] = ()  # the config vector of that train.py

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status=}")
        object.__setattr__(self, "status", str(Status(self.status).value))
        if self.val_bpb is not None:
            object.__setattr__(self, "val_bpb", float(self.val_bpb))
            if not math.isfinite(self.val_bpb):
                object.__setattr__(self, "val_bpb", None)  # a NaN metric is no metric
        if self.status == Status.OK and (self.val_bpb is None or self.val_bpb <= 0):
            raise ValueError(f"an ok experiment needs a finite positive val_bpb, got {self.val_bpb=}")
        if not math.isfinite(self.reward):
            raise ValueError(f"reward must be finite, got {self.reward=}")
        object.__setattr__(self, "index", int(self.index))
        object.__setattr__(self, "reward", float(self.reward))
        object.__setattr__(self, "accepted", bool(self.accepted))
        object.__setattr__(self, "config", tuple(float(x) for x in self.config))

    @property
    def is_ok(self) -> bool:
        return self.status == Status.OK


@dataclass(frozen=True)
class MemoryConfig:
    """Sizes of what memory keeps and scales of the observation."""

    recent: int = 32
    """Experiments in the sliding window (the most recent by index)."""
    best: int = 5
    """Best ok experiments kept (lowest val_bpb; ties go to the earlier one)."""
    patience: int = 32
    """Experiments at which since_improvement reaches 1 and count reaches 0.5."""
    scale: float = 10.0
    """Factor on log val_bpb ratios before tanh, so a 5% improvement reads about -0.46."""

    def __post_init__(self) -> None:
        for name in ("recent", "best", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MemoryConfig.{name} must be a positive int, got {value=}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"MemoryConfig.scale must be positive and finite, got {self.scale=}")


def _by_index(e: Experiment) -> int:
    return e.index


def _by_val_bpb(e: Experiment) -> tuple[float, int]:
    return (e.val_bpb, e.index)


class Memory:
    """The window of recent experiments, the best ones, and every code hash ever seen."""

    observation_size = len(OBSERVATION_NAMES)

    def __init__(self, config: MemoryConfig | None = None) -> None:
        self.config = config or MemoryConfig()
        self._recent: list[Experiment] = []  # sorted by index, at most config.recent
        self._best: list[Experiment] = []  # sorted by (val_bpb, index), at most config.best
        self._hashes: set[str] = set()
        self._indices: set[int] = set()
        self._first_ok: Experiment | None = None  # lowest-index ok experiment: the reference of best_rel/last_rel
        self._last_ok: Experiment | None = None  # highest-index ok experiment

    def __len__(self) -> int:
        return len(self._indices)

    def add(self, e: Experiment) -> None:
        """Remember one experiment; experiments may arrive in any order, each index once."""
        if e.index in self._indices:
            raise ValueError(f"experiment index already in memory, got {e.index=}")
        self._indices.add(e.index)
        self._hashes.add(e.code_hash)
        bisect.insort(self._recent, e, key=_by_index)
        del self._recent[: max(0, len(self._recent) - self.config.recent)]
        if e.is_ok:
            bisect.insort(self._best, e, key=_by_val_bpb)
            del self._best[self.config.best:]
            if self._first_ok is None or e.index < self._first_ok.index:
                self._first_ok = e
            if self._last_ok is None or e.index > self._last_ok.index:
                self._last_ok = e

    def recent(self) -> list[Experiment]:
        """The most recent experiments, oldest first."""
        return list(self._recent)

    def best(self) -> list[Experiment]:
        """The best ok experiments, best first."""
        return list(self._best)

    def is_duplicate(self, code_hash: str) -> bool:
        """True if any experiment ever added ran this normalized code (not only those still in the window)."""
        return code_hash in self._hashes

    def _rel(self, e: Experiment) -> float:
        return math.tanh(self.config.scale * math.log(e.val_bpb / self._first_ok.val_bpb))

    def observation(self) -> np.ndarray:
        """Fixed-length float32 summary (see OBSERVATION_NAMES), finite, in [-1, 1] but rewards (clipped to ±5)."""
        obs = dict.fromkeys(OBSERVATION_NAMES, 0.0)
        if self._best:
            obs["has_ok"] = 1.0
            obs["best_rel"] = self._rel(self._best[0])
            obs["last_rel"] = self._rel(self._last_ok)
        for i, e in enumerate(reversed(self._recent[-REWARD_HISTORY:]), start=1):
            obs[f"reward_{-i}"] = float(np.clip(e.reward, -_REWARD_CLIP, _REWARD_CLIP))
        if self._recent:
            for e in self._recent:
                obs[f"frac_{e.status}"] += 1.0 / len(self._recent)
                obs["frac_accepted"] += float(e.accepted) / len(self._recent)
        since = sum(1 for i in self._indices if i > self._best[0].index) if self._best else len(self._indices)
        obs["since_improvement"] = min(1.0, since / self.config.patience)
        obs["count"] = len(self._indices) / (len(self._indices) + self.config.patience)
        vector = np.array([obs[name] for name in OBSERVATION_NAMES], dtype=np.float32)
        return np.nan_to_num(vector, nan=0.0, posinf=_REWARD_CLIP, neginf=-_REWARD_CLIP)

    def render(self, recent_limit: int | None = None) -> str:
        """Prompt text: the best experiments and the recent window as aligned tables; recent_limit keeps only the
        newest of the window (a prompt that must shrink drops the oldest first)."""
        if not self._indices:
            return "No experiments yet."
        recent = list(self._recent)
        if recent_limit is not None:
            recent = recent[-recent_limit:] if recent_limit > 0 else []
        first = self._first_ok
        lines = [f"{len(self._indices)} experiments so far; "
                 + (f"first ok val_bpb {first.val_bpb:.4f} (#{first.index})." if first else "no ok run yet.")]
        lines += ["", f"Best {len(self._best)} (lowest val_bpb among ok runs):"] + self._table(self._best)
        lines += ["", f"Recent {len(recent)} (oldest first):"] + self._table(recent)
        return "\n".join(lines)

    def _table(self, experiments: list[Experiment]) -> list[str]:
        if not experiments:
            return ["  (none)"]
        rows = [f"  {'#':>5}  {'val_bpb':>8}  {'vs_first':>8}  {'reward':>7}  {'status':<8}  {'kept':<4}  description"]
        for e in experiments:
            bpb = f"{e.val_bpb:.4f}" if e.val_bpb is not None else "-"
            rel = f"{100 * (e.val_bpb / self._first_ok.val_bpb - 1):+.2f}%" \
                if e.val_bpb is not None and self._first_ok else "-"
            text = (e.description.strip().splitlines() or [""])[0]
            text = text if len(text) <= _DESCRIPTION_WIDTH else text[: _DESCRIPTION_WIDTH - 3] + "..."
            rows.append(f"  {e.index:>5}  {bpb:>8}  {rel:>8}  {e.reward:>+7.3f}  {e.status:<8}  "
                        f"{'yes' if e.accepted else 'no':<4}  {text}")
        return rows

    def to_dict(self) -> dict:
        """JSON-safe state for resume (kit.ledger's set_meta); from_dict() restores an equal memory."""
        return {
            "config": asdict(self.config),
            "recent": [asdict(e) for e in self._recent],
            "best": [asdict(e) for e in self._best],
            "first_ok": asdict(self._first_ok) if self._first_ok else None,
            "last_ok": asdict(self._last_ok) if self._last_ok else None,
            "hashes": sorted(self._hashes),
            "indices": sorted(self._indices),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Memory:
        names = {f.name for f in fields(Experiment)}

        def experiment(d: dict | None) -> Experiment | None:
            return None if d is None else Experiment(**{k: v for k, v in d.items() if k in names})

        memory = cls(MemoryConfig(**data["config"]))
        memory._recent = sorted((experiment(d) for d in data["recent"]), key=_by_index)
        memory._best = sorted((experiment(d) for d in data["best"]), key=_by_val_bpb)
        memory._first_ok = experiment(data["first_ok"])
        memory._last_ok = experiment(data["last_ok"])
        memory._hashes = set(data["hashes"])
        memory._indices = {int(i) for i in data["indices"]}
        return memory

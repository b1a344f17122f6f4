"""kit.evaluate: the causality audit passes causal models untouched, catches reading ahead or across rows, and is
caught as often as its docstring says: a model peeking at a share f of positions escapes n row probes with
probability (1 - f)^n."""

import math

import pytest
import torch

from kit.evaluate import (
    MIN_ROW_PROBES,
    CausalityAudit,
    CausalityViolation,
    load_program,
    probes_per_batch,
    writes_anything,
)

VOCAB = 1000  # large, so a probe's donor token almost never equals the token it replaces


class Model(torch.nn.Module):
    """Causal by default: each position's logits are its own token's embedding plus a running mean of the row."""

    def __init__(self, peek_at=None, other_row=False):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(VOCAB, VOCAB)
        self.peek_at, self.other_row = peek_at, other_row

    def forward(self, idx):
        h = self.embed(idx)
        out = h + h.cumsum(1) / torch.arange(1, idx.shape[1] + 1)[None, :, None]
        if self.peek_at is not None:  # the next token's embedding, at the positions in peek_at
            ahead = torch.nn.functional.pad(self.embed(idx[:, 1:]), (0, 0, 0, 1))
            mask = torch.zeros(idx.shape[1])
            mask[list(self.peek_at)] = 1.0
            out = out + ahead * mask[None, :, None]
        if self.other_row:  # the same position of the next row
            out = out + h.roll(-1, dims=0)
        return out


def _batches(n: int, rows: int, T: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (rows, T), generator=g) for _ in range(n)]


def _caught(model, batches, probes: int, seed: int) -> bool:
    audit = CausalityAudit(model, rows=batches[0].shape[0], probes=probes, seed=seed)
    try:
        with torch.no_grad():
            for x in batches:
                audit(x)
    except CausalityViolation:
        return True
    return False


def test_a_causal_model_passes_and_its_logits_are_returned_untouched():
    model, x = Model(), _batches(1, 8, 32)[0]
    audit = CausalityAudit(model, rows=8, probes=4, seed=1)
    with torch.no_grad():
        assert torch.equal(audit(x), model(x))
    assert audit.row_probes == 32


def test_the_escape_rate_is_one_minus_f_to_the_n():
    # 20 cut positions, 2 of them peek: f = 0.1; 4 rows x 3 probes: n = 12, escape probability 0.9^12 = 0.28
    T, rows, probes, trials = 21, 4, 3, 400
    model, batches = Model(peek_at={3, 11}), _batches(1, rows, T)
    escaped = sum(not _caught(model, batches, probes, seed=s) for s in range(trials))
    expected = (1 - 2 / (T - 1)) ** (rows * probes)
    sd = math.sqrt(trials * expected * (1 - expected))
    assert abs(escaped - trials * expected) < 4 * sd, (escaped, trials * expected)


@pytest.mark.parametrize("cheat", ["between the three old probe positions", "in every row but the first",
                                   "the whole future", "the next row"])
def test_reading_ahead_or_across_rows_is_caught_at_the_profiles_probe_count(cheat):
    rows, T, batches = 16, 64, 8  # the cpu profile's shape, shorter rows
    if cheat == "between the three old probe positions":
        model = Model(peek_at=set(range(T - 1)) - {0, T // 2, T - 2})
    elif cheat == "in every row but the first":
        model = Model(peek_at=range(T - 1))
        forward = model.forward
        model.forward = lambda idx: torch.cat([model.embed(idx[:1]) + 0 * forward(idx)[:1], forward(idx)[1:]])
    elif cheat == "the whole future":
        model = Model()
        model.forward = lambda idx: model.embed(idx) + model.embed(idx).mean(dim=1, keepdim=True)
    else:
        model = Model(other_row=True)
    probes = probes_per_batch(batches, rows)
    assert batches * rows * probes >= MIN_ROW_PROBES
    assert all(_caught(model, _batches(batches, rows, T, seed=s), probes, seed=s) for s in range(5)), cheat


class _Writes(torch.nn.Module):
    """A model that writes to a tensor in its forward pass: to a buffer it keeps (state between calls), or only to
    a tensor of its own making (no state)."""

    def __init__(self, keeps_state: bool):
        super().__init__()
        self.keeps_state = keeps_state
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        if self.keeps_state:
            self.calls.add_(1)
            return x + self.calls
        y = x * 2
        y.add_(1)
        return y


def _saved(model, tmp_path):
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(3),), strict=False), path)
    return path


def test_only_a_graph_that_writes_nothing_skips_functionalization(tmp_path):
    pure = torch.export.export(torch.nn.Linear(3, 3), (torch.zeros(1, 3),))
    assert not writes_anything(pure)
    local = _saved(_Writes(keeps_state=False), tmp_path)
    assert writes_anything(torch.export.load(local))
    assert load_program(local).module()(torch.zeros(3)).tolist() == [1.0, 1.0, 1.0]  # writing to its own tensor is fine
    with pytest.raises(ValueError, match="mutates state"):
        load_program(_saved(_Writes(keeps_state=True), tmp_path))

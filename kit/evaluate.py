"""Out-of-process evaluation of a handed-off model: the number that counts.

    python -m kit.evaluate --profile cpu --model RUN_DIR/model.pt2
    echo RUN_DIR/model.pt2 | python -m kit.evaluate --profile cpu --model -   # started early, waits for the path

Owns: loading the exported graph in a fresh process, refusing graphs that keep state between
calls, the causality audit (CausalityAudit: a row's logits must not depend on its later tokens or on
other rows), and calling prepare.evaluate_bpb, which feeds input tokens only and computes the loss
from the logits itself. Prints one JSON line: {"val_bpb": .., "status": .., "reason": .., "token_losses": [..]} (the
last: the model's per-token losses on the first evaluation batch, its signature for kit/seed_check.py).
Does not own: running train.py or the sandbox (kit/harness.py starts this module inside one).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import operator
import os
import sys
from pathlib import Path

import torch

SIGNATURE_TOKENS = 4096
"""Per-token losses of the first evaluation batch that the verdict carries (kit/seed_check.py compares them)."""

MIN_ROW_PROBES = 128
"""Row probes per evaluation at the least: probes per evaluation batch are raised until batches × rows × probes
reaches this (the cpu profile's 8 batches of 16 rows need one probe each; smoke's 4 of 8 need four)."""


def load_program(path: Path):
    """The exported program, or ValueError when it mutates buffers (state could leak between calls)."""
    program = torch.export.load(str(path))
    if not writes_anything(program):
        return program  # nothing in it can change state: functionalizing (0.3-0.5 s) would find nothing
    # Export keeps in-place ops in its graph; functionalizing them makes every state change visible here.
    program = program.run_decompositions({})
    signature = program.graph_signature
    mutated = list(signature.buffers_to_mutate) + list(getattr(signature, "user_inputs_to_mutate", {}))
    if mutated:
        raise ValueError(f"the model mutates state during its forward pass ({', '.join(map(str, mutated[:3]))})")
    return program


def writes_anything(program) -> bool:
    """Whether any node of the graph, or of a graph nested in it, could write to a tensor: a call of anything but a
    non-mutating ATen operator (or indexing its tuple result). In-place and out= operators have mutable schemas;
    higher-order operators, Python calls and call_module nodes are counted as writes, unexamined, so only a graph
    that provably keeps no state skips functionalization."""
    for module in program.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.op in ("call_module", "call_method"):
                return True
            if node.op == "call_function" and not _reads_only(node.target):
                return True
    return False


def _reads_only(target) -> bool:
    if target is operator.getitem:
        return True
    return isinstance(target, torch._ops.OpOverload) and not target._schema.is_mutable


class CausalityViolation(Exception):
    """The audit caught the model reading a later token or another row; the message says where."""


class CausalityAudit:
    """The forward the metric is computed with, audited on every batch it is given.

    After each real evaluation batch x (rows × T tokens of validation text), the audit runs the model again on a
    probe: for every row r a cut k_r is drawn uniformly from 0..T-2, and the row's tokens after k_r are replaced by
    the tokens at the same positions of another row (real text too, so a probe looks like evaluation data). A
    causal, row-independent model gives the same logits at positions 0..k_r of every row; any difference beyond
    float noise is a CausalityViolation. The cuts and the donor rows come from a generator seeded from os.urandom
    in this process, fresh for every evaluation: train.py never sees them and cannot predict them.

    What it catches. A model whose logits at a position depend on the next token, at a share f of the positions of
    a row, is caught by one row probe with probability f (the cut must land on such a position), independently for
    every row and probe; it escapes n row probes with probability (1 - f)^n. An evaluation makes at least
    n = MIN_ROW_PROBES = 128 of them: a model peeking at 5 % of positions escapes with probability 0.14 %, at 10 %
    with 1.4e-6, at 20 % with 4e-13 (gpu: n = 2048). Reading further ahead than the next token, or the whole future
    (non-causal attention), is caught more easily: at a cut anywhere before the token read. A model reading other
    rows is caught when a row it reads was changed before the position read, which for reading the same position of
    another row happens in about one row probe in six. Each probe costs one forward pass of an evaluation batch.
    """

    def __init__(self, forward, rows: int, probes: int = 1, seed: int | None = None):
        self.forward, self.probes = forward, probes
        self.generator = torch.Generator().manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8)))
        self.rows = rows
        self.row_probes = 0
        self.signature: list[float] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.forward(x)
        if self.signature is None:
            self.signature = token_losses(x, logits)
        for _ in range(self.probes):
            self._probe(x, logits.float())
        return logits

    def _probe(self, x: torch.Tensor, reference: torch.Tensor) -> None:
        rows, T = x.shape
        cuts = torch.randint(0, T - 1, (rows,), generator=self.generator)
        shift = int(torch.randint(1, rows, (), generator=self.generator)) if rows > 1 else 0
        donor = x.roll(shift, dims=0) if rows > 1 else x.roll(int(T // 2), dims=1)
        after = torch.arange(T)[None, :] > cuts[:, None]  # the positions each row's probe changes
        changed = torch.where(after.to(x.device), donor, x)
        moved = (self.forward(changed).float() - reference).abs().amax(dim=-1)  # (rows, T)
        moved = moved.masked_fill(after.to(moved.device), 0.0).amax(dim=-1).cpu()  # over each row's kept prefix
        scale = reference.abs().max().item() + 1e-6
        tolerance = (1e-3 if reference.device.type == "cpu" else 2e-2) * scale
        self.row_probes += rows
        worst = int(moved.argmax())
        if moved[worst] > tolerance:
            raise CausalityViolation(
                f"non-causal model: changing tokens after position {int(cuts[worst])} of row {worst} (and other rows "
                f"after theirs) changed its logits up to that position by {float(moved[worst]):.3g}")


def token_losses(x: torch.Tensor, logits: torch.Tensor) -> list[float]:
    """The loss of each next-token prediction within the rows of x (at most SIGNATURE_TOKENS): what the model
    predicts, in a form any two models of the same data can be compared by."""
    nats = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)),
                                             x[:, 1:].reshape(-1), reduction="none")
    return [round(v, 4) for v in nats[:SIGNATURE_TOKENS].cpu().tolist()]


def probes_per_batch(batches: int, rows: int) -> int:
    """Probes per evaluation batch so that an evaluation makes at least MIN_ROW_PROBES row probes."""
    return max(1, math.ceil(MIN_ROW_PROBES / (batches * rows)))


def evaluate(model_path: Path, profile_name: str) -> dict:
    import prepare

    profile = prepare.get_profile(profile_name)
    device = prepare.get_device()
    try:
        program = load_program(model_path)
    except ValueError as error:
        return {"status": "tampered", "val_bpb": None, "reason": str(error)}
    audited = CausalityAudit(program.module(), profile.eval_batch_size,
                             probes_per_batch(profile.eval_batches, profile.eval_batch_size))
    try:
        with torch.no_grad():
            val_bpb = prepare.evaluate_bpb(audited, profile, device)
    except CausalityViolation as violation:
        return {"status": "tampered", "val_bpb": None, "reason": str(violation)}
    if not math.isfinite(val_bpb):
        reason = f"val_bpb is {val_bpb}: the model's logits are not finite"
        return {"status": "crash", "val_bpb": None, "reason": reason}
    return {"status": "ok", "val_bpb": val_bpb, "reason": "", "token_losses": audited.signature}


def warm_up() -> None:
    """Export and load a tiny model once: the first torch.export.load in a process pays ~1.5 s of lazy set-up.
    Functionalizing is left cold: graphs that write nothing (the baseline's, most edits') skip it."""
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),)), buffer)
    buffer.seek(0)
    torch.export.load(buffer).module()(torch.zeros(1, 2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate a handed-off model (prints one JSON line).")
    parser.add_argument("--profile", required=True)
    parser.add_argument("--model", required=True, help="path of the exported model; '-' reads it from stdin")
    args = parser.parse_args(argv)
    try:
        if args.model == "-":  # started early by the harness: get ready, then wait for the hand-off
            warm_up()
        model = sys.stdin.readline().strip() if args.model == "-" else args.model
        if not model:
            return 0  # the harness had nothing to evaluate
        result = evaluate(Path(model), args.profile)
    except Exception as error:  # any failure is a record with a reason, never a silent number
        result = {"status": "crash", "val_bpb": None, "reason": f"evaluation failed: {type(error).__name__}: {error}"}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

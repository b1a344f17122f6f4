"""Out-of-process evaluation of a handed-off model: the number that counts.

    python -m kit.evaluate --profile cpu --model RUN_DIR/model.pt2
    echo RUN_DIR/model.pt2 | python -m kit.evaluate --profile cpu --model -   # started early, waits for the path

Owns: loading the exported graph in a fresh process, refusing graphs that keep state between
calls, the causality probe (changing later tokens, or other rows of the batch, must not change a
row's earlier logits), and calling prepare.evaluate_bpb, which feeds input tokens only and
computes the loss from the logits itself. Prints one JSON line: {"val_bpb": .., "status": .., "reason": ..}.
Does not own: running train.py or the sandbox (kit/harness.py starts this module inside one).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from pathlib import Path

import torch


def load_program(path: Path):
    """The exported program, or ValueError when it mutates buffers (state could leak between calls)."""
    program = torch.export.load(str(path))
    # Export keeps in-place ops in its graph; functionalizing them makes every state change visible here.
    program = program.run_decompositions({})
    signature = program.graph_signature
    mutated = list(signature.buffers_to_mutate) + list(getattr(signature, "user_inputs_to_mutate", {}))
    if mutated:
        raise ValueError(f"the model mutates state during its forward pass ({', '.join(map(str, mutated[:3]))})")
    return program


def causality_violation(forward, example: torch.Tensor, vocab_size: int, seed: int = 0) -> str | None:
    """Why forward is not causal and row-independent, or None when the probe finds nothing.

    Row 0's logits up to position k must not change when tokens after k, or any other row, change.
    """
    generator = torch.Generator().manual_seed(seed)
    rows, T = example.shape
    x = torch.randint(0, vocab_size, (rows, T), generator=generator).to(example.device)
    reference = forward(x).float()
    scale = reference.abs().max().item() + 1e-6
    tolerance = (1e-3 if reference.dtype == torch.float32 and x.device.type == "cpu" else 2e-2) * scale
    for k in sorted({0, T // 2, T - 2}):  # first, middle and last position; each probe costs a forward pass
        changed = x.clone()
        changed[0, k + 1:] = torch.randint(0, vocab_size, (T - k - 1,), generator=generator).to(x.device)
        if rows > 1:
            changed[1:] = torch.randint(0, vocab_size, (rows - 1, T), generator=generator).to(x.device)
        diff = (forward(changed).float()[0, :k + 1] - reference[0, :k + 1]).abs().max().item()
        if diff > tolerance:
            return (f"non-causal model: changing tokens after position {k} (or other rows) changed "
                    f"earlier logits by {diff:.3g}")
    return None


def evaluate(model_path: Path, profile_name: str) -> dict:
    import prepare

    profile = prepare.get_profile(profile_name)
    device = prepare.get_device()
    try:
        program = load_program(model_path)
    except ValueError as error:
        return {"status": "tampered", "val_bpb": None, "reason": str(error)}
    module = program.module()
    example = prepare.eval_example(profile, device)
    with torch.no_grad():
        violation = causality_violation(module, example, profile.vocab_size)
        if violation:
            return {"status": "tampered", "val_bpb": None, "reason": violation}
        val_bpb = prepare.evaluate_bpb(module, profile, device)
    if not math.isfinite(val_bpb):
        reason = f"val_bpb is {val_bpb}: the model's logits are not finite"
        return {"status": "crash", "val_bpb": None, "reason": reason}
    return {"status": "ok", "val_bpb": val_bpb, "reason": ""}


def warm_up() -> None:
    """Export and load a tiny model once: the first torch.export.load in a process pays ~1.5 s of lazy set-up."""
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),)), buffer)
    buffer.seek(0)
    torch.export.load(buffer).run_decompositions({}).module()(torch.zeros(1, 2))


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

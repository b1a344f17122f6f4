"""The PPO policy's shipped weights: pre-trained over many research runs in worlds drawn from a prior
(`python -m kit bench pretrain` makes them: kit/bench/pretrain.py), and what they expect of a run they are carried
to.

Owns: `WEIGHTS` (the file beside this module), `signature` (what a run must match for the weights to mean anything:
every knob's declared range, the catalog's edits, the observation's size and the reward it was trained on), and
`save` and `load`, whose refusal is one line that says what to do.
Does not own: the network (kit/policies/operator.py) or the training (kit/bench/pretrain.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from kit.edits import Edit
    from kit.hyperparams import Hyperparameter

WEIGHTS = Path(__file__).with_name("ppo_pretrained.pt")
FORMAT = 2  # 2: the policy asks CMA-ES as one of its actions


class WeightsMismatch(ValueError):
    """Weights that were made for another train.py, catalog, observation or reward, or no weights at all."""


def signature(knobs: list[Hyperparameter], catalog: list[Edit], observation_size: int, reward: str) -> str:
    """A short digest of what the weights depend on; the knobs' current values do not count (the observation holds
    them), their names, kinds and declared ranges do."""
    described = {
        "knobs": [[k.name, k.kind, k.low, k.high, k.log_scale, k.choices] for k in knobs],
        "catalog": [e.describe() for e in catalog],
        "observation": observation_size,
        "reward": reward,
        "format": FORMAT,
    }
    return hashlib.sha256(json.dumps(described, default=str).encode()).hexdigest()[:16]


def save(path: Path, parameters: dict[str, torch.Tensor], expects: str, about: dict[str, Any]) -> None:
    """Write the weights (whole or not at all) with the signature they expect and how they were made."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    torch.save({"format": FORMAT, "signature": expects, "parameters": parameters, "about": about}, tmp)
    tmp.replace(path)


def load(path: Path, expects: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The parameters and how they were made; WeightsMismatch (one line) when there are none or they expect another
    run than this."""
    path = Path(path)
    advice = "run with --from-scratch, or pre-train weights for this train.py with `python -m kit bench pretrain`"
    if not path.exists():
        raise WeightsMismatch(f"no pre-trained PPO weights at {path}: {advice}")
    try:
        saved = torch.load(path, weights_only=True)
    except Exception as error:  # a torn or foreign file: say which, in one line
        raise WeightsMismatch(f"{path} is not a weights file this kit wrote ({type(error).__name__}): {advice}") \
            from None
    if saved.get("format") != FORMAT or saved.get("signature") != expects:
        about = saved.get("about", {})
        raise WeightsMismatch(f"the pre-trained PPO weights in {path} were made for another train.py, catalog, "
                              f"observation or reward (theirs {saved.get('signature')}, trained on "
                              f"{about.get('reward', '?')} rewards; this run's {expects}): {advice}")
    return saved["parameters"], saved.get("about", {})

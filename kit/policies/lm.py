"""A language-model policy that writes edits of train.py, trained with PPO on the tokens it generates.

Owns: loading any Hugging Face causal LM (a local path or a hub name) with LoRA adapters (peft), a small value head
on the prompt's last hidden state, sampling a completion from the rendered prompt (kit/prompt.py) and turning it
into a candidate train.py, and the PPO update on the generated tokens: per-token log-probabilities and entropy
(trl's selective_log_softmax and entropy_from_logits), the clipped objective with one sequence-level advantage
per proposal, a KL penalty to the frozen reference (the same model with its adapters disabled), the value loss,
gradient checkpointing and micro-batches so a 0.5-1.5 B model trains on one GPU.
Does not own: the prompt (kit/prompt.py), running anything (kit/loop.py), the operator policy's PPO (kit/ppo.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from kit.edits import EditError
from kit.policies.base import Outcome, Policy, Proposal, Setup, State
from kit.prompt import parse_completion, render_prompt


@dataclass(frozen=True)
class LMPolicyConfig:
    model: str
    """Local path or hub name of a causal LM (transformers AutoModelForCausalLM)."""
    max_new_tokens: int = 512
    temperature: float = 0.8
    top_p: float = 0.95
    context_tokens: int | None = None
    """Prompt budget in tokens; None: the model's context length minus max_new_tokens."""
    kl_coef: float = 0.05
    """Weight of the KL divergence to the reference model (adapters disabled) in the loss."""
    clip_coef: float = 0.2
    vf_coef: float = 0.5
    ent_coef: float = 0.01
    learning_rate: float = 1e-5
    value_learning_rate: float = 1e-3
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"
    update_epochs: int = 2
    micro_batch: int = 1
    """Sequences per forward pass in the update; gradients accumulate over a batch."""
    ppo_every: int = 4
    """Proposals per PPO update."""
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = True
    device: str | None = None
    """None: cuda if available, else cpu."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.ppo_every < 1 or self.micro_batch < 1 or self.update_epochs < 1:
            raise ValueError(f"max_new_tokens, ppo_every, micro_batch and update_epochs must be >= 1, got {self}")
        if not (self.temperature > 0 and 0 < self.top_p <= 1 and self.kl_coef >= 0):
            raise ValueError(f"need temperature > 0, top_p in (0, 1], kl_coef >= 0, got {self.temperature=}, "
                             f"{self.top_p=}, {self.kl_coef=}")


def _token_logprobs(model, prompt: torch.Tensor, completion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                     torch.Tensor]:
    """Per-token log-probs and entropies of completion given prompt, and the last prompt position's hidden state."""
    from trl.trainer.utils import entropy_from_logits, selective_log_softmax

    ids = torch.cat([prompt, completion])[None]
    out = model(input_ids=ids, output_hidden_states=True)
    logits = out.logits[0, len(prompt) - 1:-1].float()  # position i predicts token i + 1
    return (selective_log_softmax(logits, completion), entropy_from_logits(logits),
            out.hidden_states[-1][0, len(prompt) - 1].float())


class LMPolicy(Policy):
    """Behind the same protocol as the other policies; `learn` stores a transition and updates every ppo_every."""

    name = "lm"

    def __init__(self, config: LMPolicyConfig, model=None, tokenizer=None, program: str | None = None):
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config, self.program = config, program
        self.device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if model is None:
            dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
            model = AutoModelForCausalLM.from_pretrained(config.model, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(config.model)
        if tokenizer is None:
            raise ValueError("a model passed in needs its tokenizer too")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        if config.gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # the name transformers 5 uses
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        lora = LoraConfig(task_type="CAUSAL_LM", r=config.lora_r, lora_alpha=config.lora_alpha,
                          lora_dropout=config.lora_dropout, target_modules=config.target_modules)
        self.model = get_peft_model(model, lora).to(self.device)
        if config.gradient_checkpointing:
            self.model.enable_input_require_grads()
        hidden = self.model.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden, 1).to(self.device)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self.optimizer = torch.optim.AdamW([
            {"params": [p for p in self.model.parameters() if p.requires_grad], "lr": config.learning_rate},
            {"params": self.value_head.parameters(), "lr": config.value_learning_rate}], weight_decay=0.0)
        self.buffer: list[dict] = []
        self.proposals = 0

    @classmethod
    def build(cls, setup: Setup) -> LMPolicy:
        if not setup.lm_model:
            raise ValueError("the lm policy needs a model: give --lm-model PATH_OR_NAME")
        # one update per rollout of the loop's length, as for the operator policy
        return cls(LMPolicyConfig(model=setup.lm_model, seed=setup.seed, ppo_every=setup.ppo.num_steps))

    # proposing ------------------------------------------------------------------------------------------------

    @property
    def prompt_budget(self) -> int:
        if self.config.context_tokens is not None:
            return self.config.context_tokens
        limit = getattr(self.model.config.get_text_config(), "max_position_embeddings", None) or 4096
        return limit - self.config.max_new_tokens

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def propose(self, state: State) -> Proposal:
        rendered = render_prompt(state.source, state.memory, self.count_tokens, self.prompt_budget, self.program)
        prompt = torch.tensor(self.tokenizer(rendered.text)["input_ids"], device=self.device)
        torch.manual_seed(self.config.seed * 1_000_003 + self.proposals)  # sampling is reproducible per proposal
        self.proposals += 1
        self.model.eval()
        with torch.no_grad():
            generated = self.model.generate(
                input_ids=prompt[None], attention_mask=torch.ones_like(prompt)[None], do_sample=True,
                temperature=self.config.temperature, top_p=self.config.top_p,
                max_new_tokens=self.config.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                use_cache=True)[0, len(prompt):]  # the config's use_cache is off for gradient checkpointing
            if self.tokenizer.eos_token_id is not None and (generated == self.tokenizer.eos_token_id).any():
                generated = generated[: int((generated == self.tokenizer.eos_token_id).nonzero()[0]) + 1]
            if len(generated) == 0:
                generated = torch.tensor([self.tokenizer.eos_token_id], device=self.device)
            logprobs, _, hidden = _token_logprobs(self.model, prompt, generated)
            value = float(self.value_head(hidden))
        completion = self.tokenizer.decode(generated, skip_special_tokens=True)
        tokens = {"prompt": prompt.tolist(), "completion": generated.tolist(), "logprobs": logprobs.tolist(),
                  "elided": list(rendered.elided), "recent_shown": rendered.recent_shown}
        try:
            candidate, description = parse_completion(completion, state.source)
            error = None
        except EditError as failure:
            candidate, description, error = None, "unusable completion", str(failure)
        return Proposal(edit=None, values=None, action=None, logprob=float(logprobs.sum()), value=value,
                        description=f"lm: {description}", candidate=candidate, error=error, tokens=tokens)

    def observe(self, outcome: Outcome) -> dict:
        return self.learn(outcome.proposal, outcome.reward)

    # learning -------------------------------------------------------------------------------------------------

    def learn(self, proposal: Proposal, reward: float) -> dict:
        """Keep the transition; run the PPO update once ppo_every are kept. The stats of an update, else {}."""
        if proposal.tokens is None:
            return {}
        self.buffer.append({**proposal.tokens, "value": proposal.value, "reward": float(reward)})
        if len(self.buffer) < self.config.ppo_every:
            return {}
        stats = self.update(self.buffer)
        self.buffer = []
        return stats

    def update(self, transitions: list[dict]) -> dict[str, float]:
        """update_epochs passes of the clipped PPO objective over the transitions, in micro-batches."""
        c = self.config
        rewards = torch.tensor([t["reward"] for t in transitions])
        values = torch.tensor([t["value"] for t in transitions])
        advantages = rewards - values  # each proposal is one step: the return is its reward
        if len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        seqs = [(torch.tensor(t["prompt"], device=self.device), torch.tensor(t["completion"], device=self.device),
                 torch.tensor(t["logprobs"], device=self.device)) for t in transitions]
        self.model.eval()
        with torch.no_grad(), self.model.disable_adapter():  # the frozen reference, computed once
            reference = [_token_logprobs(self.model, p, comp)[0] for p, comp, _ in seqs]
        self.model.train()
        log: dict[str, list[float]] = {}
        for _ in range(c.update_epochs):
            order = torch.randperm(len(seqs), generator=torch.Generator().manual_seed(c.seed + self.proposals))
            self.optimizer.zero_grad()
            for start in range(0, len(seqs), c.micro_batch):
                for i in order[start:start + c.micro_batch].tolist():
                    parts = self._loss(*seqs[i], reference[i], advantages[i], rewards[i])
                    (parts["loss"] / len(seqs)).backward()
                    for name, value in parts.items():
                        log.setdefault(name, []).append(float(value.detach()))
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            nn.utils.clip_grad_norm_(params, c.max_grad_norm)
            self.optimizer.step()
        return {f"losses/{k}": float(sum(v) / len(v)) for k, v in log.items()}

    def _loss(self, prompt, completion, old_logprobs, ref_logprobs, advantage, ret) -> dict[str, torch.Tensor]:
        c = self.config
        logprobs, entropy, hidden = _token_logprobs(self.model, prompt, completion)
        logratio = logprobs - old_logprobs
        ratio = logratio.exp()
        policy_loss = torch.max(-advantage * ratio,
                                -advantage * ratio.clamp(1 - c.clip_coef, 1 + c.clip_coef)).mean()
        to_ref = ref_logprobs - logprobs
        kl_ref = (to_ref.exp() - to_ref - 1).mean()  # k3 estimator of KL(policy || reference), >= 0
        value_loss = 0.5 * (self.value_head(hidden).squeeze() - ret) ** 2
        loss = policy_loss + c.vf_coef * value_loss - c.ent_coef * entropy.mean() + c.kl_coef * kl_ref
        with torch.no_grad():
            approx_kl = ((ratio - 1) - logratio).mean()
            clipfrac = ((ratio - 1).abs() > c.clip_coef).float().mean()
        return {"loss": loss, "policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(),
                "entropy": entropy.mean().detach(), "kl_ref": kl_ref.detach(), "approx_kl": approx_kl,
                "clipfrac": clipfrac}

    # checkpoints ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        from peft import get_peft_model_state_dict

        return {"adapter": {k: v.cpu() for k, v in get_peft_model_state_dict(self.model).items()},
                "value_head": self.value_head.state_dict(), "optimizer": self.optimizer.state_dict(),
                "buffer": self.buffer, "proposals": self.proposals}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, d["adapter"])
        self.value_head.load_state_dict(d["value_head"])
        self.optimizer.load_state_dict(d["optimizer"])
        self.buffer, self.proposals = d["buffer"], d["proposals"]


"""GPU memory and seconds of the language-model policy: proposals and PPO updates; writes bench/lm_policy.md.

    python bench/lm_policy.py                        # a model found on this machine, else random ones
    python bench/lm_policy.py --model PATH_OR_NAME   # a model of your choosing

Each model proposes `ppo_every` edits of the repository's train.py from a full prompt (program.md, train.py and a
memory of 37 experiments), then runs one PPO update on them (2 epochs, micro-batch 1, gradient checkpointing,
LoRA r=16 on every linear layer, KL to the adapter-free reference), timed with the GPU synchronized and with the
allocator's peak memory read around each phase. Finally one real loop iteration with the first model on the
`smoke` profile (gate, sandboxed run, reward, memory, ledger) shows it works end to end.
With no model on the machine (nothing can be downloaded there), the models are randomly initialized with the
shapes of two public 0.5 B and 1.5 B checkpoints and a byte-level BPE trained here on the repository's text;
random weights write noise, so their completions are rejected, which costs the same tokens as a real edit.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from kit import REPO_ROOT as REPO
from kit import edits
from kit.memory import Experiment, Memory
from kit.policies import State
from kit.policies.lm import LMPolicy, LMPolicyConfig

# Shapes of public checkpoints (hidden, layers, heads, kv heads, MLP), used only when no weights are on the machine.
SHAPES = {
    "random, 0.5 B-class shape (896 × 24 layers)": (896, 24, 14, 2, 4864),
    "random, 1.5 B-class shape (1536 × 28 layers)": (1536, 28, 12, 2, 8960),
}
VOCAB = 16384  # the BPE trained here on the repository's text; a real checkpoint's vocabulary is larger


def local_models() -> list[str]:
    """Causal-LM checkpoints already on this machine (the Hugging Face cache), smallest first."""
    hub = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    found = []
    for config in hub.glob("models--*/snapshots/*/config.json"):
        if any(config.parent.glob("*.safetensors")) and (config.parent / "tokenizer.json").exists():
            size = sum(p.stat().st_size for p in config.parent.glob("*.safetensors"))
            if size < 4e9:
                found.append((size, str(config.parent)))
    return [path for _, path in sorted(found)]


def repo_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [p.read_text(errors="replace") for p in sorted(REPO.rglob("*.py")) + sorted(REPO.rglob("*.md"))
             if ".venv" not in p.parts]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def random_model(shape: tuple[int, ...], tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hidden, layers, heads, kv_heads, mlp = shape
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=mlp,
                         max_position_embeddings=32768, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).to(torch.bfloat16)


def full_memory() -> Memory:
    """32 recent and 5 best experiments, as the loop's memory holds after a long run."""
    memory = Memory()
    for i in range(60):
        memory.add(Experiment(index=i + 1, code_hash=f"h{i}", description=f"MATRIX_LR ×{1 + i / 100:.2f}, "
                              f"WEIGHT_DECAY -> {0.1 - i / 1000:.3f}", status="ok" if i % 4 else "pruned",
                              val_bpb=2.70 - 0.002 * i, reward=0.01 * (i % 7 - 3), accepted=i % 9 == 0))
    return memory


def measure(name: str, model, tokenizer, config: LMPolicyConfig) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    policy = LMPolicy(config, model=model, tokenizer=tokenizer)
    params = sum(p.numel() for p in policy.model.parameters())
    trainable = sum(p.numel() for p in policy.model.parameters() if p.requires_grad)
    source = (REPO / "train.py").read_text()
    state = State(source=source, catalog=[], mask=None, observation=None, knobs=edits.knobs(source),
                  memory=full_memory())
    loaded = torch.cuda.max_memory_allocated()
    propose_s, proposals = [], []
    for _ in range(config.ppo_every):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        proposals.append(policy.propose(state))
        torch.cuda.synchronize()
        propose_s.append(time.perf_counter() - t0)
    propose_peak = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    rewards = [(-1.0) ** i for i in range(len(proposals))]
    transitions = [{**p.tokens, "value": p.value, "reward": r} for p, r in zip(proposals, rewards, strict=True)]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    stats = policy.update(transitions)
    torch.cuda.synchronize()
    update_s = time.perf_counter() - t0
    row = {"name": name, "params": params, "trainable": trainable, "loaded_gib": loaded / 2**30,
           "prompt_tokens": len(proposals[0].tokens["prompt"]),
           "completion_tokens": sum(len(p.tokens["completion"]) for p in proposals) / len(proposals),
           "propose_s": sum(propose_s) / len(propose_s), "propose_peak_gib": propose_peak / 2**30,
           "update_s": update_s, "update_peak_gib": torch.cuda.max_memory_allocated() / 2**30,
           "kl_ref": stats["losses/kl_ref"], "approx_kl": stats["losses/approx_kl"],
           "rejected": sum(p.candidate is None for p in proposals)}
    print(row, flush=True)
    del policy
    return row


def loop_iteration(model, tokenizer, config: LMPolicyConfig) -> str:
    """One real loop iteration on the smoke profile with the model saved and loaded back as a user's would be."""
    import prepare
    from kit.ledger import Ledger
    from kit.loop import LoopConfig, run_loop
    from kit.stopping import StopConditions

    prepare.prepare_data(prepare.get_profile("smoke"))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "lm")
        tokenizer.save_pretrained(Path(tmp) / "lm")
        t0 = time.perf_counter()
        run_loop(LoopConfig(run_dir=Path(tmp) / "run", profile="smoke", policy="lm", lm_model=str(Path(tmp) / "lm"),
                            stop=StopConditions(iterations=2), noise_repeats=1))
        seconds = time.perf_counter() - t0
        with Ledger(Path(tmp) / "run", readonly=True) as ledger:
            record = ledger.records()[-1]
    return (f"`python -m kit loop --profile smoke --policy lm --lm-model <the 0.5 B-class model, saved> "
            f"--iterations 2` (one noise-floor run, then one lm proposal) took {seconds:.0f} s in all; the lm "
            f"experiment ended `{record.status}` with reward {record.reward:+.2f} ({record.reason[:80]}).")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="a causal LM (local path or hub name); default: one found here, else random")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "lm_policy.md")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/lm_policy.py measures GPU memory: run it on a machine with a CUDA GPU")
    config = LMPolicyConfig(model="-", max_new_tokens=args.max_new_tokens, ppo_every=4, device="cuda")
    models = [args.model] if args.model else local_models()[:1]
    rows = []
    if models:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        for path in models:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
            rows.append(measure(Path(path).name, model, AutoTokenizer.from_pretrained(path), config))
        first_model, tokenizer = AutoModelForCausalLM.from_pretrained(models[0], dtype=torch.bfloat16), \
            AutoTokenizer.from_pretrained(models[0])
    else:
        tokenizer = repo_tokenizer()
        for name, shape in SHAPES.items():
            rows.append(measure(name, random_model(shape, tokenizer), tokenizer, config))
        first_model = random_model(next(iter(SHAPES.values())), tokenizer)
    loop_line = loop_iteration(copy.deepcopy(first_model), tokenizer, config)

    gpu = torch.cuda.get_device_name()
    lines = ["# The language-model policy on one GPU", "",
             f"Measured by `python bench/lm_policy.py` in one run on {gpu} "
             f"({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB), torch {torch.__version__}, "
             f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}.", "",
             ("Models: " + ", ".join(models) + "." if models else
              "No causal-LM weights were on the machine and none can be downloaded there, so the models are randomly "
              f"initialized with the shapes of public 0.5 B and 1.5 B checkpoints and a {len(tokenizer):,}-token BPE "
              "trained on the repository's own text (a real checkpoint's vocabulary of about 150 K tokens adds "
              "embedding weights and larger logits). Random weights write noise: every completion runs to the "
              "token limit and is rejected, which is the most expensive case."), "",
             f"Settings: bf16 weights, LoRA r={config.lora_r} on every linear layer, gradient checkpointing, "
             f"micro-batch {config.micro_batch}, {config.update_epochs} PPO epochs, {config.ppo_every} proposals per "
             f"update, up to {config.max_new_tokens} new tokens, prompt = program.md + train.py + 32 recent and 5 best "
             "experiments.", "",
             "| model | params | trainable | prompt tokens | new tokens | s / proposal | ms / new token | "
             "peak GiB (propose) | s / PPO update | peak GiB (update) | KL to reference |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['params'] / 1e6:,.0f} M | {r['trainable'] / 1e6:.1f} M | "
                     f"{r['prompt_tokens']:,} | {r['completion_tokens']:.0f} | {r['propose_s']:.1f} | "
                     f"{1000 * r['propose_s'] / r['completion_tokens']:.0f} | "
                     f"{r['propose_peak_gib']:.1f} | {r['update_s']:.1f} | {r['update_peak_gib']:.1f} | "
                     f"{r['kl_ref']:.2e} |")
    lines += ["", "The KL to the reference is that of the first update, when the adapters are still at their "
              "initialization (LoRA's B = 0), so it is near zero; it grows as the adapters learn. A proposal's time "
              "is the prompt's forward pass plus one decoding step per new token (KV cache on), sampled with "
              "`transformers`' generate through the LoRA wrappers; where ms per new token hardly changes with the "
              "model's size, decoding is bound by per-step overhead, not by the GPU's arithmetic.", "",
              "## One loop iteration", "", loop_line, ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

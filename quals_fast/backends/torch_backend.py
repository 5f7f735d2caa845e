"""PyTorch backend over a Hugging Face BART checkpoint in a local folder.

The decoder is driven layer by layer with the checkpoint's own modules so that (1) an input's
cross-attention keys/values are computed once and shared by all of its beams instead of being
copied per beam, and (2) the self-attention cache is reordered by the row indices the C++ search
returns. The same code teacher-forces all targets of a source against one encoding.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from quals_fast.backends.base import ModelSpec, split_target_scores, teacher_forcing_arrays

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class _DecodeState:
    num_beams: int
    enc_keys: List[torch.Tensor]      # per layer (inputs, heads, src_len, head_dim)
    enc_values: List[torch.Tensor]
    enc_mask: torch.Tensor            # (inputs, 1, 1, src_len) bool, True = attend
    self_keys: List[Optional[torch.Tensor]]
    self_values: List[Optional[torch.Tensor]]
    step: int = 0


def _pad(seqs: Sequence[Sequence[int]], pad_id: int, device) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out.to(device)


class TorchBackend:
    name = "torch"

    def __init__(self, model_dir, device="cpu", dtype="float32", threads=None):
        from transformers import BartForConditionalGeneration

        if dtype not in DTYPES:
            raise ValueError("dtype must be one of %s, got %r" % (sorted(DTYPES), dtype))
        if threads is not None:
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        self.dtype = DTYPES[dtype]
        model = BartForConditionalGeneration.from_pretrained(
            str(model_dir), local_files_only=True, dtype=self.dtype
        )
        self.model = model.eval().to(self.device)
        cfg = model.config
        self.num_heads = cfg.decoder_attention_heads
        self.head_dim = cfg.d_model // self.num_heads
        self.spec = ModelSpec(
            vocab_size=cfg.vocab_size,
            pad_id=cfg.pad_token_id,
            eos_id=cfg.eos_token_id,
            bos_id=cfg.bos_token_id,
            decoder_start_id=cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else cfg.eos_token_id,
            max_source_positions=cfg.max_position_embeddings,
            max_target_positions=cfg.max_position_embeddings,
            source_bos=bool(getattr(cfg, "qagen_source_bos", False)),
        )
        self._decoder = model.model.decoder
        self._encoder = model.model.encoder

    # ------------------------------------------------------------------ helpers
    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # (batch, len, d_model) -> (batch, heads, len, head_dim)
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = x.shape
        return x.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)

    def _encode(self, input_ids: Sequence[Sequence[int]]):
        ids = _pad(input_ids, self.spec.pad_id, self.device)
        mask = ids.ne(self.spec.pad_id)
        hidden = self._encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        keys = [self._heads(layer.encoder_attn.k_proj(hidden)) for layer in self._decoder.layers]
        values = [self._heads(layer.encoder_attn.v_proj(hidden)) for layer in self._decoder.layers]
        return keys, values, mask[:, None, None, :]

    def _embed(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        dec = self._decoder
        positions = dec.embed_positions.weight[start + dec.embed_positions.offset: start + dec.embed_positions.offset
                                               + tokens.shape[1]]
        return dec.layernorm_embedding(dec.embed_tokens(tokens) + positions)

    def _cross(self, attn, h, keys, values, mask, rows_per_input):
        # All rows of an input query the same encoder states: fold them into the query length of
        # one attention call per input instead of copying keys/values per row.
        n, t, d = h.shape
        b = keys.shape[0]
        q = self._heads(attn.q_proj(h).reshape(b, rows_per_input * t, d))
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return attn.out_proj(self._merge(out).reshape(n, t, d))

    def _layer(self, layer, h, self_k, self_v, causal, keys, values, mask, rows_per_input):
        sa = layer.self_attn
        q = self._heads(sa.q_proj(h))
        out = F.scaled_dot_product_attention(q, self_k, self_v, is_causal=causal)
        h = layer.self_attn_layer_norm(h + sa.out_proj(self._merge(out)))
        h = layer.encoder_attn_layer_norm(h + self._cross(layer.encoder_attn, h, keys, values, mask, rows_per_input))
        return layer.final_layer_norm(h + layer.fc2(layer.activation_fn(layer.fc1(h))))

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return (self.model.lm_head(h) + self.model.final_logits_bias.to(h.dtype)).float()

    # ------------------------------------------------------------------ protocol
    @torch.inference_mode()
    def encode(self, input_ids, num_beams):
        keys, values, mask = self._encode(input_ids)
        n_layers = len(self._decoder.layers)
        return _DecodeState(num_beams, keys, values, mask, [None] * n_layers, [None] * n_layers)

    @torch.inference_mode()
    def decoder_step(self, state, tokens, source_rows):
        K = state.num_beams
        if source_rows is not None:
            idx = torch.from_numpy(np.ascontiguousarray(source_rows, dtype=np.int64)).to(self.device)
            inputs_kept = idx[::K] // K
            if inputs_kept.numel() != state.enc_mask.shape[0]:
                state.enc_keys = [k.index_select(0, inputs_kept) for k in state.enc_keys]
                state.enc_values = [v.index_select(0, inputs_kept) for v in state.enc_values]
                state.enc_mask = state.enc_mask.index_select(0, inputs_kept)
            state.self_keys = [k.index_select(0, idx) for k in state.self_keys]
            state.self_values = [v.index_select(0, idx) for v in state.self_values]
        tok = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)).to(self.device)[:, None]
        h = self._embed(tok, state.step)
        for i, layer in enumerate(self._decoder.layers):
            sa = layer.self_attn
            k, v = self._heads(sa.k_proj(h)), self._heads(sa.v_proj(h))
            if state.self_keys[i] is not None:
                k = torch.cat([state.self_keys[i], k], dim=2)
                v = torch.cat([state.self_values[i], v], dim=2)
            state.self_keys[i], state.self_values[i] = k, v
            h = self._layer(layer, h, k, v, False, state.enc_keys[i], state.enc_values[i], state.enc_mask, K)
        state.step += 1
        lprobs = torch.log_softmax(self._logits(h[:, 0]), dim=-1)
        return lprobs.cpu().numpy()

    @torch.inference_mode()
    def score_targets(self, source_ids, targets):
        keys, values, mask = self._encode(source_ids)
        b = len(source_ids)
        dec_in, gold = teacher_forcing_arrays(targets, self.spec.decoder_start_id, self.spec.pad_id)
        rows, width = dec_in.shape[1:]
        dec_in = torch.from_numpy(dec_in).view(b * rows, width).to(self.device)
        gold = torch.from_numpy(gold).view(b * rows, width).to(self.device)
        h = self._embed(dec_in, 0)
        for i, layer in enumerate(self._decoder.layers):
            sa = layer.self_attn
            k, v = self._heads(sa.k_proj(h)), self._heads(sa.v_proj(h))
            h = self._layer(layer, h, k, v, True, keys[i], values[i], mask, rows)
        logits = self._logits(h)
        token_lp = logits.gather(-1, gold[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)
        return split_target_scores(token_lp.view(b, rows, width).cpu().numpy(), targets)

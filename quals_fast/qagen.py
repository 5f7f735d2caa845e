"""QAGen: the one seq2seq model QUALS uses, at the level of token ids and of text.

`QAGen.load` opens a local model folder behind a backend; `generate_ids` / `score_ids` work on
ids (and so serve checkpoints without a tokenizer, like the oracle model), the text helpers need
the folder's tokenizer."""
from typing import List, Sequence, Tuple

import numpy as np

from quals_fast.backends import load_backend
from quals_fast.checkpoint import ORIGINAL_SEPARATOR, load_tokenizer, open_checkpoint
from quals_fast.generation import GenerationOptions, Hypothesis, generate
from quals_fast.rescoring import RescoringOptions, TargetScore, rescore, truncate_with_eos


def answer_search_text(tokenizer, text: str) -> str:
    """The summary as the verbatim-answer filter searches it.

    The original QAGen's byte-level BPE decodes losslessly, so the summary itself is searched.
    A WordPiece tokenizer (our MiniLM-based QAGen) does not: "17.5 million" decodes as
    "17. 5 million", "mexico-united" as "mexico - united", and about one gold SQuAD answer in nine
    would never match its own paragraph. Generated answers are decoded text, so the summary is
    compared in the same decoded form: its own round trip through the tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or type(backend.model).__name__ != "WordPiece":
        return text
    return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"], skip_special_tokens=True)


def _check_ids(seq, what, vocab_size):
    if isinstance(seq, (str, bytes)):
        raise TypeError("%s must be a sequence of token ids, got a string" % what)
    ids = np.asarray(seq)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError("%s must be a non-empty 1-D sequence of token ids" % what)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError("%s must hold integers, got dtype %s" % (what, ids.dtype))
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError("%s holds ids outside the vocabulary [0, %d)" % (what, vocab_size))
    return [int(x) for x in ids]


class QAGen:
    def __init__(self, backend, checkpoint, tokenizer=None, separator=None):
        self.backend = backend
        self.spec = backend.spec
        self.checkpoint = checkpoint
        self.tokenizer = tokenizer
        self.separator = separator if separator is not None else (checkpoint.separator or ORIGINAL_SEPARATOR)
        if not isinstance(self.separator, str) or not self.separator:
            raise ValueError("separator must be a non-empty string, got %r" % (self.separator,))
        if tokenizer is not None:
            self._check_separator()

    @classmethod
    def load(cls, model_dir=None, backend="torch", device="cpu", separator=None, **backend_options):
        """Open a local model folder (None: the embedded default model)."""
        checkpoint = open_checkpoint(model_dir)
        runtime = load_backend(backend, checkpoint.path, device=device, **backend_options)
        return cls(runtime, checkpoint, load_tokenizer(checkpoint), separator)

    # ------------------------------------------------------------------ ids
    def generate_ids(self, inputs: Sequence[Sequence[int]], num_beams=60, num_groups=60, diversity_strength=0.5,
                     min_len=8, max_len=60, len_penalty=1.0) -> List[List[Hypothesis]]:
        """Diverse beam search over already-tokenised inputs (each ending with EOS); all inputs
        decode in one batch."""
        options = GenerationOptions(num_beams, num_groups, diversity_strength, min_len, max_len, len_penalty)
        if isinstance(inputs, (str, bytes)) or not len(inputs):
            raise ValueError("inputs must be a non-empty list of token-id lists")
        ids = [_check_ids(x, "input %d" % i, self.spec.vocab_size) for i, x in enumerate(inputs)]
        too_long = [i for i, x in enumerate(ids) if len(x) > self.spec.max_source_positions]
        if too_long:
            raise ValueError("inputs %s exceed the model's %d positions" % (too_long, self.spec.max_source_positions))
        return generate(self.backend, ids, options)

    def score_ids(self, source_ids: Sequence[int], targets: Sequence[Sequence[int]]) -> List[TargetScore]:
        """Teacher-forced log-probs of each target (ending with EOS) given one source."""
        src = _check_ids(source_ids, "source_ids", self.spec.vocab_size)
        if len(src) > self.spec.max_source_positions:
            raise ValueError("source_ids exceed the model's %d positions" % self.spec.max_source_positions)
        tgts = [_check_ids(t, "target %d" % i, self.spec.vocab_size) for i, t in enumerate(targets)]
        if not tgts:
            return []
        return rescore(self.backend, [src], [tgts], RescoringOptions(rescoring_batch_size=1))[0]

    # ------------------------------------------------------------------ text
    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("model folder %s has no tokenizer files: only generate_ids/score_ids work on it"
                             % self.checkpoint.path)
        return self.tokenizer

    def _check_separator(self):
        # A separator the tokenizer can never produce would silently reject every QA pair.
        tok = self.tokenizer
        sep_ids = tok(self.separator, add_special_tokens=False)["input_ids"]
        special = set(tok.all_special_ids) | set(sep_ids)
        filler = next(i for i in range(len(tok)) if i not in special)
        round_trip = tok.decode([filler] + sep_ids + [filler], skip_special_tokens=True)
        if not sep_ids or self.separator not in round_trip:
            raise ValueError("separator %r cannot come out of this tokenizer's decoding (it round-trips as %r); "
                             "pass the checkpoint's separator" % (self.separator, round_trip))

    def encode_text(self, text: str, max_tokens: int) -> Tuple[List[int], bool]:
        """Text -> ids followed by EOS, truncated as the reference truncates; no BOS (fairseq BART
        with no_bos) unless the model asks for one (`ModelSpec.source_bos`). Returns (ids, truncated)."""
        # verbose=False: the tokenizer would warn of "indexing errors" on long texts that are truncated here
        ids = self._require_tokenizer()(text, add_special_tokens=False, verbose=False)["input_ids"]
        bos = [self.spec.bos_id] if self.spec.source_bos else []
        return truncate_with_eos(bos + ids + [self.spec.eos_id], min(max_tokens, self.spec.max_source_positions),
                                 self.spec.eos_id)

    def decode(self, tokens: Sequence[int]) -> str:
        tokens = list(tokens)
        if tokens and tokens[-1] == self.spec.eos_id:
            tokens = tokens[:-1]
        return self._require_tokenizer().decode(tokens, skip_special_tokens=True)

    def answer_search_text(self, summary: str) -> str:
        return answer_search_text(self._require_tokenizer(), summary)

    def token_strings(self, tokens: Sequence[int]) -> List[str]:
        return self._require_tokenizer().convert_ids_to_tokens([int(t) for t in tokens])

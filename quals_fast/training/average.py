"""Weight averaging of QAGen checkpoints (`quals-fast average-qagen`).

Checkpoints of one run, or of several runs continued from the same weights, sit in one basin of
the loss; their uniform average ("checkpoint averaging" as in fairseq, a "uniform soup" in
Wortsman et al. 2022) often generalises better than any one of them and smooths out the
step-to-step swings that single checkpoints show on small held-out sets. The average is taken in
fp32 over the inputs' stored weights and written in the shipping form (fp16 model folder), with
its validation loss on the same held-out questions that training validates on."""
import argparse
import json
from pathlib import Path

import torch

from .qagen_data import VALID_FILE, as_model_reads, build_paragraphs, validation_items


def _weights_file(path: Path) -> Path:
    f = Path(path) / "model.safetensors"
    if not f.is_file():
        raise FileNotFoundError(f"{path}: no model.safetensors (expected a model folder or a train-qagen checkpoint)")
    return f


def _load_into(model, path: Path) -> None:
    """Load one input's weights into `model`. A model folder leaves out the tied copies of the
    embedding that a train-qagen checkpoint stores, so a key may be missing only if a tensor it
    shares storage with was loaded; anything else means another architecture."""
    from safetensors.torch import load_file

    sd = load_file(str(_weights_file(path)))
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{path}: does not fit the base architecture: {e}") from None
    ptr = {k: v.data_ptr() for k, v in model.state_dict().items()}
    loaded = {ptr[k] for k in sd if k in ptr}
    missing = [k for k in missing if ptr[k] not in loaded]
    if missing or unexpected:
        raise ValueError(f"{path}: its tensors differ from the base architecture: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()


@torch.no_grad()
def average_into(model, paths) -> None:
    """Set `model`'s weights to the element-wise mean (fp32) of the weights stored in `paths`."""
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise ValueError("averaging needs at least two checkpoints")
    model.float()
    total = None
    for p in paths:
        _load_into(model, p)
        sd = model.state_dict()
        if total is None:
            total = {k: v.clone() for k, v in sd.items()}
        else:
            for k, v in sd.items():
                total[k] += v
    model.load_state_dict({k: v / len(paths) for k, v in total.items()})
    model.tie_weights()


@torch.no_grad()
def validation_loss(model, tokenizer, data_dir, val_examples: int = 400, max_source_len: int = 512,
                    max_target_len: int = 64, batch_size: int = 64) -> tuple[float, int]:
    """(mean NLL per target token, questions) on the first `val_examples` held-out questions: the
    figure `train-qagen` logs as `val_loss`, so an average compares directly with its inputs."""
    from .qagen import QAGEN_RECIPE, evaluate

    sep_id = model.config.qagen_separator_token_id
    paras = as_model_reads(build_paragraphs([Path(data_dir) / VALID_FILE], tokenizer, sep_id, max_source_len,
                                            max_target_len), model.config, max_source_len)
    items = validation_items(paras, val_examples)
    return evaluate(model, paras, items, batch_size, torch.device("cpu"), "fp32", QAGEN_RECIPE), len(items)


def average_qagen(inputs, output_dir, base=None, data_dir="../shared/data/squad", val_examples: int = 400,
                  threads: int = 1) -> dict:
    """Average `inputs` (model folders or train-qagen checkpoints) into the model folder
    `output_dir`; the configuration and tokenizer come from `base` (default: the first input that
    is a model folder). Returns what `training_info.json` records."""
    from .warmstart import load_qagen_for_training, save_model_folder

    inputs = [Path(p) for p in inputs]
    if base is None:
        base = next((p for p in inputs if (p / "config.json").is_file()), None)
        if base is None:
            raise ValueError("no input is a model folder (with config.json); pass base= (--base)")
    out = Path(output_dir)
    if out.resolve() in {p.resolve() for p in inputs + [Path(base)]}:
        raise ValueError(f"{out} is one of the inputs; write the average to a new folder")
    if val_examples < 1:
        raise ValueError("val_examples must be >= 1")
    torch.set_num_threads(threads)
    model, tok = load_qagen_for_training(str(base))
    average_into(model, inputs)
    val, n_val = validation_loss(model, tok, data_dir, val_examples)
    info = {"averaged_from": [str(p) for p in inputs], "base": str(base), "val_loss": val, "val_questions": n_val}
    save_model_folder(model, tok, out, dtype=torch.float16)
    (out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def register_cli(subparsers):
    p = subparsers.add_parser("average-qagen", help="average the weights of QAGen checkpoints into one model folder",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="model folders or train-qagen checkpoints (each holds model.safetensors)")
    p.add_argument("--output", required=True, help="the new model folder")
    p.add_argument("--base", default=None, help="model folder giving config and tokenizer (default: the first input that has them)")
    p.add_argument("--data-dir", default="../shared/data/squad", help="folder holding %s (validation loss)" % VALID_FILE)
    p.add_argument("--val-examples", type=int, default=400)
    p.add_argument("--threads", type=int, default=1)

    def run(args):
        try:
            info = average_qagen(args.inputs, args.output, args.base, args.data_dir, args.val_examples, args.threads)
        except (OSError, ValueError) as e:
            raise SystemExit(f"average-qagen: {e}")
        print(f"averaged {len(info['averaged_from'])} checkpoints into {args.output}: validation loss {info['val_loss']:.4f}")
        return 0

    p.set_defaults(func=run)
    return p

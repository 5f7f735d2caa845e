"""Rebuild the model that benchmarks/gpu_s34.sh sent back from the GPU machine.

    python benchmarks/gpu_pick_merge.py RETURNED_DIR OUTPUT_DIR [--base quals_fast/models/qagen-minilm]

The device returns at most 16 MiB per file, so the script sends only the tensors that differ from
B0, split into `pick.safetensors.partNN`, with the pick's config and tokenizer in `logs.tar.xz`
(`meta/`). Here the parts are joined, laid over the base model's tensors (the frozen word
embeddings and the final bias come from it) and written with the config and tokenizer as a model
folder that every quals-fast command loads."""
import argparse
import shutil
import tarfile
import tempfile
from pathlib import Path

from safetensors.torch import load, load_file, save_file


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("returned", type=Path, help="the folder the device's files landed in")
    ap.add_argument("output", type=Path)
    ap.add_argument("--base", type=Path, default=Path("quals_fast/models/qagen-minilm"))
    args = ap.parse_args(argv)
    parts = sorted(args.returned.glob("pick.safetensors.part*"))
    if not parts:
        raise SystemExit(f"no pick.safetensors.part* in {args.returned}: the leg sent nothing back")
    diff = load(b"".join(p.read_bytes() for p in parts))
    tensors = load_file(str(args.base / "model.safetensors"))
    unknown = sorted(set(diff) - set(tensors))
    if unknown:
        raise SystemExit(f"tensors the base model lacks (another architecture?): {unknown[:5]}")
    for name, value in diff.items():
        if value.shape != tensors[name].shape or value.dtype != tensors[name].dtype:
            raise SystemExit(f"{name}: {tuple(value.shape)} {value.dtype} against the base's "
                             f"{tuple(tensors[name].shape)} {tensors[name].dtype}")
    tensors.update(diff)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(args.returned / "logs.tar.xz") as tar:
            tar.extractall(tmp, filter="data")
        meta = Path(tmp) / "meta"
        if not (meta / "config.json").is_file():
            raise SystemExit("logs.tar.xz holds no meta/config.json")
        args.output.mkdir(parents=True, exist_ok=True)
        for f in meta.iterdir():
            shutil.copy(f, args.output / f.name)
    save_file(tensors, str(args.output / "model.safetensors"), metadata={"format": "pt"})
    print(f"{args.output}: {len(diff)} of {len(tensors)} tensors from the GPU, the rest from {args.base}")


if __name__ == "__main__":
    main()

"""Model folders: what must be in them, where the default model lives, and which separator a
checkpoint uses. Nothing is ever downloaded: every path is a local folder."""
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ORIGINAL_SEPARATOR = " strutConnector"
DEFAULT_MODEL_NAME = "qagen-minilm"
MODELS_DIR = Path(__file__).resolve().parent / "models"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Written by `quals-fast export`: an ONNX folder's graphs stand in for the PyTorch weights.
ONNX_MANIFEST = "quals_onnx.json"
MODEL_FILES = WEIGHT_FILES + (ONNX_MANIFEST,)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer_config.json")


class ModelFolderError(FileNotFoundError):
    pass


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    config: dict
    has_tokenizer: bool

    @property
    def separator(self) -> Optional[str]:
        return self.config.get("qagen_separator")


def default_model_dir() -> Path:
    return MODELS_DIR / DEFAULT_MODEL_NAME


def open_checkpoint(model_dir=None, needs_weights=MODEL_FILES) -> Checkpoint:
    """Checks that a model folder holds what the engine needs and names whatever is missing."""
    path = Path(model_dir) if model_dir is not None else default_model_dir()
    if not path.is_dir():
        if model_dir is None:
            raise ModelFolderError(
                "the embedded default model is not installed at %s; pass a model folder explicitly" % path)
        raise ModelFolderError("model folder %s does not exist" % path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelFolderError("model folder %s has no config.json" % path)
    if needs_weights and not any((path / f).is_file() for f in needs_weights):
        raise ModelFolderError("model folder %s has no weights (expected one of: %s)" % (path, ", ".join(needs_weights)))
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    for key in ("eos_token_id", "pad_token_id", "vocab_size"):
        if config.get(key) is None:
            raise ModelFolderError("%s lacks %r" % (config_path, key))
    has_tokenizer = any((path / f).is_file() for f in TOKENIZER_FILES)
    return Checkpoint(path=path, config=config, has_tokenizer=has_tokenizer)


def load_tokenizer(checkpoint: Checkpoint):
    if not checkpoint.has_tokenizer:
        return None
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(str(checkpoint.path), local_files_only=True)

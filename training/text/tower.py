"""History-tower text model: BERT item tower over cached lower layers, user tower over history.

CPU design (the whole fit log in minutes, not one 128-token BERT pass per pair):

- the lower ``L - top_layers`` BERT layers are frozen; their output for every item's tokens is
  computed once and cached in memory as fp16 (``LowerCache``);
- the item tower = the top ``top_layers`` BERT layers (fine-tuned) + attention-masked mean
  pooling + a linear projection (identity at start) + L2 normalization;
- the user tower = a linear map (identity at start, with bias) of the mean of the vectors of the
  user's last ``history`` liked items, L2-normalized; history vectors come from an item table
  refreshed with the current item tower once per epoch (stop-gradient);
- loss: softmax over the whole catalog for every positive (the batch's target items with
  gradients, every other item from the table), plus a weighted binary cross-entropy of a learned
  affine map of the cosine against the labels, which is where explicit negatives (low ratings,
  unclicked impressions) enter.  Each distinct target item runs through the top layers once per
  batch.

On CUDA the same code runs the top layers under bf16 autocast; nothing here is CPU specific.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from recsys.core import compat

log = logging.getLogger(__name__)


@dataclass
class LowerCache:
    """fp16 outputs of the frozen lower layers for every item's tokens (padded to ``T``)."""

    hidden: torch.Tensor  # [N, T, d] float16
    mask: torch.Tensor  # [N, T] int64

    def __len__(self) -> int:
        return int(self.hidden.shape[0])

    def batch(self, rows: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        mask = self.mask[idx]
        width = max(1, int(mask.sum(1).max()))
        return self.hidden[idx, :width].float(), mask[:, :width]


def additive_mask(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[B, T]`` 0/1 mask -> ``[B, 1, 1, T]`` additive attention mask for a BertLayer."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def run_layers(
    layers: Sequence[nn.Module], hidden: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    ext = additive_mask(mask, hidden.dtype).to(hidden.device)
    for layer in layers:
        out = layer(hidden, attention_mask=ext)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-6)


@torch.inference_mode()
def build_lower_cache(
    backbone: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    n_lower: int,
    batch_size: int = 128,
    on_batch: object = None,
) -> LowerCache:
    """Run embeddings + the first ``n_lower`` layers once over every item (length-sorted)."""
    bert: object = backbone
    layers = list(bert.encoder.layer)[:n_lower]  # type: ignore[attr-defined]
    n, width = input_ids.shape
    dim = int(bert.config.hidden_size)  # type: ignore[attr-defined]
    hidden = torch.zeros((n, width, dim), dtype=torch.float16)
    lengths = attention_mask.sum(1)
    order = torch.argsort(-lengths, stable=True)
    device = next(backbone.parameters()).device
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        w = max(1, int(lengths[idx].max()))
        ids = input_ids[idx, :w].to(device)
        mask = attention_mask[idx, :w].to(device)
        h = bert.embeddings(input_ids=ids)  # type: ignore[attr-defined]
        h = run_layers(layers, h, mask)
        hidden[idx, :w] = h.to("cpu", torch.float16)
        if callable(on_batch):
            on_batch(len(idx))
    return LowerCache(hidden, attention_mask.clone())


class ItemTower(nn.Module):
    """Top BERT layers (trainable) + mean pooling + projection + L2 normalization."""

    def __init__(self, top_layers: Sequence[nn.Module], dim: int) -> None:
        super().__init__()
        self.top = nn.ModuleList([copy.deepcopy(layer) for layer in top_layers])
        self.proj = nn.Linear(dim, dim)
        nn.init.eye_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def pooled(self, lower_hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Top layers + mean pooling (before the projection)."""
        return mean_pool(run_layers(list(self.top), lower_hidden, mask), mask).float()

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.proj(pooled.float()), dim=-1)

    def forward(self, lower_hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.project(self.pooled(lower_hidden, mask))


class UserTower(nn.Module):
    """Linear map (identity at start) of the mean history vector, L2-normalized."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        nn.init.eye_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, history_mean: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.proj(history_mean.float()), dim=-1)


def history_means(table: torch.Tensor, history: np.ndarray) -> torch.Tensor:
    """Mean of the item-table rows in ``history`` (``[B, H]`` row ids, -1 = padding)."""
    valid = torch.as_tensor(history >= 0, device=table.device)
    index = torch.as_tensor(np.maximum(history, 0), device=table.device)
    rows = table[index] * valid[..., None].to(table.dtype)
    return rows.sum(1) / valid.sum(1, keepdim=True).clamp(min=1).to(table.dtype)


def user_vectors(
    user_tower: UserTower, table: np.ndarray, histories: Sequence[Sequence[int]], max_items: int
) -> np.ndarray:
    """User embeddings from item-table row ids (newest last); zeros for an empty history."""
    dim = table.shape[1]
    out = np.zeros((len(histories), dim), dtype=np.float32)
    pad = np.full((len(histories), max(1, max_items)), -1, dtype=np.int64)
    has = np.zeros(len(histories), dtype=bool)
    for k, hist in enumerate(histories):
        recent = list(hist)[-max_items:]
        pad[k, : len(recent)] = recent
        has[k] = bool(recent)
    if not has.any():
        return out
    with torch.inference_mode():
        device = user_tower.proj.weight.device
        with warnings.catch_warnings():  # a read-only (stored) table is only read here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            rows = torch.from_numpy(np.ascontiguousarray(table))
        means = history_means(rows.to(device), pad[has])
        out[has] = user_tower(means).float().cpu().numpy()
    return out


def quantize(module: nn.Module) -> nn.Module:
    """A copy with every Linear layer int8 dynamically quantized (CPU inference only).

    Dynamic quantization over ONNX Runtime: no export step or extra dependency, works on any
    BERT-family module (including the partial forward of the lower-layer cache), and int8
    weights with per-batch activation scales keep cosine scores within ~1e-2 of fp32.
    """
    with warnings.catch_warnings():
        # torch 2.x marks torch.ao.quantization deprecated in favour of torchao (not installed);
        # the API works through torch 2.9+, and this is the one place that calls it.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)  # quantized tensor creation, same story
        # imported here: importing it is what warns
        quantize_dynamic = compat.torch("ao.quantization").quantize_dynamic
        return quantize_dynamic(copy.deepcopy(module).eval(), {nn.Linear}, dtype=torch.qint8)


@torch.inference_mode()
def encode_items(
    backbone: nn.Module,
    projection: nn.Linear,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    batch_size: int = 256,
    on_batch: object = None,
) -> np.ndarray:
    """Item vectors through the full backbone + mean pooling + projection, L2-normalized."""
    bert: object = backbone
    n_layers = len(bert.encoder.layer)  # type: ignore[attr-defined]
    lengths = attention_mask.sum(1).cpu()
    order = torch.argsort(-lengths, stable=True)
    idx_device = input_ids.device
    out = np.zeros((len(input_ids), projection.out_features), dtype=np.float32)
    layers = list(bert.encoder.layer)[:n_layers]  # type: ignore[attr-defined]
    for start in range(0, len(input_ids), batch_size):
        idx = order[start : start + batch_size]
        w = max(1, int(lengths[idx].max()))
        rows = idx.to(idx_device)
        mask = attention_mask[rows, :w]
        h = bert.embeddings(input_ids=input_ids[rows, :w])  # type: ignore[attr-defined]
        h = run_layers(layers, h, mask)
        vec = nn.functional.normalize(projection(mean_pool(h, mask).float()), dim=-1)
        out[idx.numpy()] = vec.float().cpu().numpy()
        if callable(on_batch):
            on_batch(len(idx))
    return out


def load_towers(path: object, dim: int) -> tuple[nn.Linear, UserTower]:
    """The item projection and the user tower saved next to a history-tower model."""
    tensors = load_file(str(Path(str(path)) / "towers.safetensors"))
    item_proj = nn.Linear(dim, dim)
    item_proj.load_state_dict(
        {"weight": tensors["item_proj.weight"], "bias": tensors["item_proj.bias"]}
    )
    user = UserTower(dim)
    user.proj.load_state_dict(
        {"weight": tensors["user_proj.weight"], "bias": tensors["user_proj.bias"]}
    )
    return item_proj.eval(), user.eval()

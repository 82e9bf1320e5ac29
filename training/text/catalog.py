"""The catalog's item vectors: encoded in this process, or in item chunks on a Dask cluster.

``recsys score`` embeds every item.  Embedded (the default), one encoder runs here.  With
``distributed.address`` set, ``encode_on_cluster`` cuts the item texts into chunks of
``distributed.score_chunk_items`` (a multiple of the scoring batch), maps them over the
workers, and gathers the vectors back in item order.  Each worker loads the text model once
(``cached_encoder``, per process) from ``model_dir``: the workers must see that path (a
shared filesystem, or the same machine) and run the same package and Python environment.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from training.text import model as tm
from training.text import tower as tw
from training.text.item_vectors import load_item_vectors

log = logging.getLogger(__name__)

Encode = Callable[[list[str]], np.ndarray]


@functools.lru_cache(maxsize=2)
def cached_encoder(model_dir: str, model_version: str, device: str) -> tm.TwoTowerEncoder:
    """One loaded encoder per model version and process (the serving writer refreshes users
    every few seconds; a Dask worker encodes many chunks)."""
    return load_scoring_encoder(Path(model_dir), torch.device(device)).eval()


def load_scoring_encoder(model_dir: Path, device: object) -> tm.TwoTowerEncoder:
    """The saved encoder; a history-tower model also gets ``item_proj`` and ``user_tower``."""
    encoder = tm.load_encoder(model_dir, device)  # type: ignore[arg-type]
    if (model_dir / "towers.safetensors").is_file():
        item_proj, user_tower = tw.load_towers(model_dir, encoder.dim)
        encoder.item_proj = item_proj.to(encoder.device)
        encoder.user_tower = user_tower.to(encoder.device)
    return encoder


def catalog_vectors(
    encode: Encode,
    model_dir: Path,
    item_ids: Sequence[str],
    texts: list[str],
    *,
    reuse: bool = True,
) -> np.ndarray:
    """Item vectors: those saved with a history-tower model for items whose text did not
    change (``reuse``, ``text.reuse_item_vectors``), the others through ``encode``."""
    saved = load_item_vectors(model_dir, item_ids, texts) if reuse else None
    if saved is None:
        return encode(texts)
    matrix, reusable = saved
    log.info(
        "item vectors: %d reused from the model's training, %d encoded",
        int(reusable.sum()),
        int((~reusable).sum()),
    )
    missing = np.flatnonzero(~reusable)
    if len(missing):
        matrix[missing] = encode([texts[k] for k in missing])
    return matrix


def encode_catalog(
    encoder: tm.TwoTowerEncoder,
    meta: dict,
    texts: list[str],
    batch_size: int,
    progress: bool,
    quantize: bool,
) -> np.ndarray:
    """Item vectors; a history-tower model encodes through int8 Linear layers on CPU when
    ``quantize`` (``text.quantize_scoring``), fp32 otherwise."""
    if meta.get("architecture") != "history_tower":
        return encoder.encode(
            texts, int(meta["max_item_tokens"]), batch_size, progress, desc="items"
        )
    batch = encoder.tokenizer(
        [t or " " for t in texts],
        max_length=int(meta["max_item_tokens"]),
        truncation=True,
        padding="max_length",
        return_tensors="pt",
    )
    backbone = encoder.backbone
    if quantize and encoder.device.type == "cpu":
        backbone = tw.quantize(backbone)
    with tqdm(total=len(texts), desc="items", disable=not progress, unit="item") as bar:
        return tw.encode_items(
            backbone,
            encoder.item_proj,  # type: ignore[arg-type]
            batch["input_ids"].to(encoder.device),
            batch["attention_mask"].to(encoder.device),
            batch_size,
            on_batch=bar.update,
        )


def encode_on_cluster(
    client: Any,
    model_dir: Path,
    model_version: str,
    device: str,
    meta: dict,
    texts: list[str],
    *,
    batch_size: int,
    quantize: bool,
    chunk_items: int,
) -> np.ndarray:
    """``encode_catalog`` of ``texts`` in chunks mapped over the Dask workers of ``client``;
    rows in the order of ``texts``.  ``device`` is resolved on each worker (``auto``: its GPU
    when it has one)."""
    chunk = max(batch_size, chunk_items // batch_size * batch_size)
    starts = list(range(0, len(texts), chunk))
    if not starts:
        return np.zeros((0, 0), dtype=np.float32)
    futures = client.map(
        _encode_chunk,
        [texts[s : s + chunk] for s in starts],
        model_dir=str(model_dir.resolve()),
        model_version=model_version,
        device=device,
        meta=meta,
        encode_batch=batch_size,  # not batch_size: Client.map has an argument of that name
        quantize=quantize,
        key=[f"encode-items-{model_version}-{s}" for s in starts],
        pure=False,
    )
    parts = client.gather(futures)
    log.info(
        "encoded %d items in %d chunks of <= %d on the Dask cluster", len(texts), len(parts), chunk
    )
    return np.concatenate(parts, axis=0)


def _encode_chunk(
    texts: list[str],
    *,
    model_dir: str,
    model_version: str,
    device: str,
    meta: dict,
    encode_batch: int,
    quantize: bool,
) -> np.ndarray:
    """On a worker: the process's cached encoder over one chunk."""
    resolved = str(tm.resolve_device(device))
    encoder = cached_encoder(model_dir, model_version, resolved)
    return encode_catalog(encoder, meta, texts, encode_batch, False, quantize)

"""Text model benchmark: fine-tuning throughput (pairs/s), catalog embedding throughput (items/s
at 128 tokens) and, with ``--quality``, a capped end-to-end ``train_text_model`` run on
MovieLens-small (wall time, fine-tuned vs zero-shot vs TF-IDF on the validation split).

On CUDA it also reports the achieved fraction of the H100's dense bf16 peak (989 TFLOP/s):
model FLOPs (2 x non-embedding parameters x tokens + attention, x3 for training) / time / peak.

Usage:  .venv/bin/python -m benchmarks.text_model [--device auto|cpu|cuda] [--quality 384]
Writes benchmarks/results/text_model.json and text_model.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from feature_store.adapters.movielens import ingest_movielens
from feature_store.db import connect
from feature_store.splits import ensure_split
from recsys.core.config import load_settings
from training.text import model as tm
from training.text import tower as tw
from training.text.pairs import build_training_pairs
from training.text.texts import item_texts
from training.text.tower_run import lower_backbone, tokenize_items, tower_config
from training.text.tower_train import (
    HeadScale,
    TowerExamples,
    build_examples,
    pooled_table,
    train_step,
)
from training.text.train import LabelHead, _batches, _train_step, train_text_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).resolve().parent / "results"
H100_BF16_PEAK = 989e12
log = logging.getLogger("benchmarks.text_model")


def _flops_per_token(encoder: Any, seq_len: float) -> float:
    """Forward FLOPs per token: dense matmuls plus attention scores and context."""
    cfg = encoder.backbone.config
    embed = sum(p.numel() for n, p in encoder.backbone.named_parameters() if "embeddings" in n)
    dense = sum(p.numel() for p in encoder.backbone.parameters()) - embed
    return 2.0 * dense + 4.0 * cfg.num_hidden_layers * seq_len * cfg.hidden_size


def _store(home: Path, data_dir: Path) -> Any:
    con = connect(home / "recsys.duckdb")
    ingest_movielens(con, data_dir, progress=False)
    return con


def bench_training(con: Any, settings: Any, device: Any, steps: int) -> dict[str, Any]:
    """Median pairs/s over ``steps`` optimizer steps of real MovieLens pairs (after 1 warm-up)."""
    ensure_split(con, settings.split)
    batch = settings.text.batch_size
    pairs = build_training_pairs(con, settings, max_pairs=batch * (steps + 1))
    texts = item_texts(con)
    encoder = tm.load_encoder(tm.resolve_base_model(settings), device)
    meta = tm.read_meta(tm.resolve_base_model(settings), settings)
    head = LabelHead(settings.text.temperature).to(device)
    opt = torch.optim.AdamW(
        [*encoder.parameters(), *head.parameters()], lr=settings.text.learning_rate
    )
    times, cpu, tokens = [], [], []
    for k, idx in enumerate(_batches(pairs, batch, np.random.default_rng(0))[: steps + 1]):
        _sync(device)
        start, cpu0 = time.perf_counter(), time.process_time()
        loss = _train_step(encoder, head, pairs, idx, texts, meta, settings)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if k:  # the first step pays for allocation and kernel selection
            times.append((time.perf_counter() - start) / len(idx))
            cpu.append((time.process_time() - cpu0) / len(idx))
            tokens.append(_batch_tokens(encoder, pairs, idx, texts, meta))
    per_pair = statistics.median(times)
    out = {
        "pairs_per_s": 1.0 / per_pair,
        # Wall rates depend on what else runs on a shared host; CPU time does much less.
        "pairs_per_cpu_s": 1.0 / statistics.median(cpu),
        "batch_size": batch,
        "steps": len(times),
        "max_user_tokens": meta["max_user_tokens"],
        "max_item_tokens": meta["max_item_tokens"],
    }
    if device.type == "cuda":
        flops = sum(3 * n * _flops_per_token(encoder, seq) for n, seq in tokens) / len(tokens)
        out["bf16_peak_fraction"] = flops / (per_pair * len(idx)) / H100_BF16_PEAK
    return out


def _batch_tokens(encoder: Any, pairs: Any, idx: Any, texts: Any, meta: Any) -> tuple[int, float]:
    users = encoder.tokenize([pairs.user_texts[k] for k in idx], int(meta["max_user_tokens"]))
    items = encoder.tokenize(
        [texts.get(pairs.item_ids[k], "") for k in idx], int(meta["max_item_tokens"])
    )
    n = int(users["attention_mask"].sum() + items["attention_mask"].sum())
    return n, float(users["input_ids"].shape[1] + items["input_ids"].shape[1]) / 2


def bench_embedding(
    con: Any, settings: Any, device: Any, n_items: int, repeats: int
) -> dict[str, Any]:
    """Median items/s encoding ``n_items`` real item texts truncated to 128 tokens."""
    texts = list(item_texts(con).values())[:n_items]
    encoder = tm.load_encoder(tm.resolve_base_model(settings), device)
    batch = settings.text.score_batch_size
    encoder.encode(texts[:batch], 128, batch)  # warm-up
    rates, cpu_rates = [], []
    for _ in range(repeats):
        _sync(device)
        start, cpu0 = time.perf_counter(), time.process_time()
        encoder.encode(texts, 128, batch)
        _sync(device)
        rates.append(len(texts) / (time.perf_counter() - start))
        cpu_rates.append(len(texts) / (time.process_time() - cpu0))
    masks = [
        encoder.tokenize(texts[s : s + 256], 128)["attention_mask"]
        for s in range(0, len(texts), 256)
    ]
    mean_tokens = float(sum(int(m.sum()) for m in masks)) / len(texts)
    out = {
        "items_per_s": statistics.median(rates),
        "items_per_cpu_s": statistics.median(cpu_rates),
        "items": len(texts),
        "repeats": repeats,
        "max_tokens": 128,
        "mean_tokens_per_item": mean_tokens,
        "full_catalog_seconds_estimate": 9742 / statistics.median(rates),
    }
    if device.type == "cuda":
        flops = mean_tokens * _flops_per_token(encoder, 128) * statistics.median(rates)
        out["bf16_peak_fraction"] = flops / H100_BF16_PEAK
    return out


def bench_quality(data_dir: Path, max_pairs: int, device: str) -> dict[str, Any]:
    """A capped end-to-end training run on a fresh home: wall time and validation metrics."""
    with tempfile.TemporaryDirectory(prefix="bench-text-") as home:
        settings = load_settings(
            overrides={"home": home, "device": device, "text.epochs": 1}, environ={}
        )
        con = _store(Path(home), data_dir)
        start = time.perf_counter()
        result = train_text_model(settings, con, max_pairs=max_pairs, progress=False)
        seconds = time.perf_counter() - start
        con.close()
    return {
        "max_pairs": max_pairs,
        "epochs": 1,
        "seconds": seconds,
        "metrics": result.metrics,
        "beats_zero_shot": result.metrics["val_auc"] > result.metrics["zeroshot_val_auc"],
        "beats_tfidf": result.metrics["val_auc"] > result.metrics["tfidf_val_auc"],
    }


def _sync(device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_tower(con: Any, settings: Any, device: Any, n_items: int, steps: int) -> dict[str, Any]:
    """The history tower (default model): lower-layer cache items/s, training examples/s over
    ``steps`` real steps, and catalog encoding items/s fp32 vs int8 with their cosine agreement
    (on ``n_items`` real item texts at 64 tokens)."""
    texts = item_texts(con)
    ids_all = sorted(texts)
    item_ids = ids_all[:n_items]
    encoder = tm.load_encoder(tm.resolve_base_model(settings), device)
    ids, mask = tokenize_items(encoder, [texts[i] for i in item_ids], 64)
    n_layers = len(encoder.backbone.encoder.layer)
    top = n_layers if device.type == "cuda" else settings.text.top_layers
    lower = lower_backbone(encoder, settings.text.quantize_cache)
    start = time.perf_counter()
    cache = tw.build_lower_cache(lower, ids, mask, n_layers - top)
    cache_rate = len(item_ids) / (time.perf_counter() - start)
    cfg = tower_config(settings, device)
    ex = build_examples(con, {i: k for k, i in enumerate(ids_all)}, 20)
    small = TowerExamples(
        np.where(ex.history >= 0, ex.history % len(item_ids), -1),
        ex.target % len(item_ids),
        ex.label,
        ex.kinds,
    )
    item_tower = tw.ItemTower(list(encoder.backbone.encoder.layer)[n_layers - top :], encoder.dim)
    item_tower = item_tower.to(device)
    towers = (item_tower, tw.UserTower(encoder.dim).to(device), HeadScale(0.05).to(device))
    pooled = pooled_table(item_tower, cache, autocast=cfg.autocast).to(device)
    rng = np.random.default_rng(0)
    times = []
    for k in range(steps + 1):
        idx = rng.choice(len(ex), size=min(cfg.batch_size, len(ex)), replace=False)
        _sync(device)
        t0 = time.perf_counter()
        train_step(towers, cache, pooled, small, idx, cfg, rng).backward()
        _sync(device)
        if k:  # the first step warms up
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    out: dict[str, Any] = {
        "items": len(item_ids),
        "top_layers": top,
        "batch_size": cfg.batch_size,
        "bert_items_per_step": cfg.bert_items,
        "cache_items_per_s": cache_rate,
        "train_examples_per_s": cfg.batch_size / step_s,
        "train_step_seconds": step_s,
    }
    proj = item_tower.proj
    for name, quant in (("fp32", False), ("int8", True)):
        backbone = tw.quantize(encoder.backbone) if quant and device.type == "cpu" else None
        backbone = backbone or encoder.backbone
        t0, c0 = time.perf_counter(), time.process_time()
        vecs = tw.encode_items(backbone, proj, ids.to(device), mask.to(device))
        out[f"encode_{name}_items_per_s"] = len(item_ids) / (time.perf_counter() - t0)
        out[f"encode_{name}_items_per_cpu_s"] = len(item_ids) / (time.process_time() - c0)
        out[f"_{name}"] = vecs
    agree = (out.pop("_fp32") * out.pop("_int8")).sum(1)
    out["int8_vs_fp32_cosine_min"] = float(agree.min())
    out["int8_vs_fp32_cosine_mean"] = float(agree.mean())
    out["int8_speedup"] = out["encode_int8_items_per_s"] / out["encode_fp32_items_per_s"]
    if device.type == "cuda":
        cfgb = encoder.backbone.config
        per_layer = 2.0 * (4 * cfgb.hidden_size**2 + 2 * cfgb.hidden_size * cfgb.intermediate_size)
        tokens = float(mask.sum()) / len(item_ids)
        flops = 3 * cfg.bert_items * tokens * per_layer * top
        out["bf16_peak_fraction"] = flops / step_s / H100_BF16_PEAK
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--data-dir", default=os.environ.get("RECSYS_DATA_DIR", "../shared/data"))
    parser.add_argument("--train-steps", type=int, default=4)
    parser.add_argument("--embed-items", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--quality", type=int, default=0, help="also run train_text_model with this pair cap"
    )
    parser.add_argument("--tag", default="", help="suffix for the result files (e.g. cpu, h100)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    device = tm.resolve_device(args.device)
    tm.seed_everything(0)
    report: dict[str, Any] = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "note": "2-core CPU shared with other work while measuring" if device.type == "cpu" else "",
    }
    with tempfile.TemporaryDirectory(prefix="bench-text-") as home:
        settings = load_settings(overrides={"home": home}, environ={})
        con = _store(Path(home), Path(args.data_dir))
        report["training"] = bench_training(con, settings, device, args.train_steps)
        log.info("training: %s", report["training"])
        report["embedding"] = bench_embedding(con, settings, device, args.embed_items, args.repeats)
        log.info("embedding: %s", report["embedding"])
        report["tower"] = bench_tower(con, settings, device, args.embed_items, args.train_steps)
        log.info("history tower: %s", report["tower"])
        con.close()
    if args.quality:
        report["quality"] = bench_quality(Path(args.data_dir), args.quality, args.device)
        log.info("quality: %s", report["quality"])
    _write(report, args.tag or device.type)


def _write(report: dict[str, Any], tag: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"text_model_{tag}.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    tr, em = report["training"], report["embedding"]
    lines = [
        f"# Text model benchmark ({tag})",
        "",
        f"device {report['device']} ({report['gpu'] or report['platform']}), "
        f"torch {report['torch']}, {report['torch_threads']} threads. {report['note']}",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| fine-tuning throughput (batch {tr['batch_size']}, user {tr['max_user_tokens']} / item "
        f"{tr['max_item_tokens']} tokens, median of {tr['steps']} steps) "
        f"| {tr['pairs_per_s']:.2f} pairs/s ({tr['pairs_per_cpu_s']:.2f} per CPU-second) |",
        f"| catalog embedding at 128 tokens (median of {em['repeats']} x {em['items']} items, "
        f"{em['mean_tokens_per_item']:.0f} tokens/item) | {em['items_per_s']:.1f} items/s "
        f"({em['items_per_cpu_s']:.1f} per CPU-second) |",
        f"| full catalog (9,742 items) estimate | {em['full_catalog_seconds_estimate']:.0f} s |",
    ]
    tw = report.get("tower")
    if tw:
        lines += [
            f"| history tower: lower-layer cache ({tw['items']} items, 64 tokens) "
            f"| {tw['cache_items_per_s']:.1f} items/s |",
            f"| history tower: training (batch {tw['batch_size']}, {tw['bert_items_per_step']} "
            f"items through the top {tw['top_layers']} layer(s) per step) "
            f"| {tw['train_examples_per_s']:.0f} examples/s |",
            f"| history tower: catalog encoding fp32 / int8 "
            f"| {tw['encode_fp32_items_per_s']:.1f} / {tw['encode_int8_items_per_s']:.1f} items/s "
            f"(x{tw['int8_speedup']:.2f}; cosine int8 vs fp32 min "
            f"{tw['int8_vs_fp32_cosine_min']:.4f}) |",
        ]
    for name, part in (("fine-tuning", tr), ("embedding", em), ("history tower", tw or {})):
        if "bf16_peak_fraction" in part:
            lines.append(
                f"| {name}: fraction of bf16 peak (989 TFLOP/s) "
                f"| {part['bf16_peak_fraction']:.3%} |"
            )
    if "quality" in report:
        q = report["quality"]
        m = q["metrics"]
        lines += [
            "",
            f"Capped training run (`--max-pairs {q['max_pairs']}`, 1 epoch): "
            f"{q['seconds']:.0f} s wall.",
            "",
            "| model | val AUC | val NDCG@10 |",
            "| --- | --- | --- |",
        ]
        for name, p in (
            ("fine-tuned", "val_"),
            ("zero-shot MiniLM", "zeroshot_val_"),
            ("TF-IDF cosine", "tfidf_val_"),
        ):
            lines.append(f"| {name} | {m[p + 'auc']:.4f} | {m[p + 'ndcg@10']:.4f} |")
    (RESULTS / f"text_model_{tag}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))  # noqa: T201 - a benchmark script reports on stdout


if __name__ == "__main__":
    main()

"""Tiny seeded interaction logs of the shapes the product trains on, with known structure.

Every user has one favourite topic; items are news-like texts whose words name their topic.

- ``write_mind``: a MIND-style impression log (news.tsv + behaviors.tsv): each line shows a
  mixed list and the user clicks the items of their topic (one at least), with the history
  of their earlier clicks;
- ``write_event_log``: a generic CSV log without ratings or served lists (``click`` or
  ``purchase`` events on items of the user's topic, a few off-topic ones) plus the items CSV
  (title, description, category) -- the column contract of docs/ingest.md.

Both are written as files, so the CLI ingests them as a user would.  They are small on
purpose (unit tests read exact answers off them).  For logs of realistic shape -- hundreds of
users, thousands of served lists, clicks that follow category interests -- use
``realistic_mind`` / ``realistic_events`` (``recsys.cli.example_logs``, the generator behind
``recsys ingest example``), generated at test time like these.
"""

from __future__ import annotations

import csv
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from recsys.cli import example_logs

TOPICS: dict[str, tuple[str, ...]] = {
    "sports": ("match", "goal", "league", "coach", "striker"),
    "finance": ("stocks", "market", "bank", "rates", "earnings"),
    "food": ("recipe", "dinner", "kitchen", "bake", "flavour"),
    "travel": ("island", "flight", "beach", "hotel", "journey"),
}
T0 = datetime(2019, 11, 10, 8, 0, 0)
MIND_TIME = "%m/%d/%Y %I:%M:%S %p"


def topic_of(item: int) -> str:
    return list(TOPICS)[item % len(TOPICS)]


def item_rows(n_items: int) -> list[dict[str, str]]:
    """``N0..``: item k is about ``topic_of(k)``; its title and description use that topic's
    words, so a text model can learn the topic from the text alone."""
    rows = []
    for k in range(n_items):
        topic = topic_of(k)
        words = TOPICS[topic]
        rows.append(
            {
                "item_id": f"N{k}",
                "title": f"{words[k % 5].title()} {words[(k + 2) % 5]} report {k}",
                "description": f"A {topic} story: the {words[(k + 1) % 5]} and the "
                f"{words[(k + 3) % 5]}.",
                "category": topic,
            }
        )
    return rows


def user_topic(user: int) -> int:
    return user % len(TOPICS)


def impression_lines(
    n_users: int = 12, n_items: int = 40, n_days: int = 4, per_day: int = 2, seed: int = 0
) -> list[tuple[str, str, datetime, list[str], list[tuple[str, int]]]]:
    """(impression id, user, time, history, [(news, clicked)]) per line, in time order.

    Each list shows six items (two of the user's topic); the user clicks the on-topic ones
    with probability 0.8 and the others with 0.1, at least one per list."""
    rng = np.random.default_rng(seed)
    history: dict[str, list[str]] = {f"U{u}": [] for u in range(n_users)}
    lines = []
    imp = 0
    for day in range(n_days):
        for slot in range(per_day):
            for u in range(n_users):
                user = f"U{u}"
                mine = [k for k in range(n_items) if k % len(TOPICS) == user_topic(u)]
                other = [k for k in range(n_items) if k % len(TOPICS) != user_topic(u)]
                shown = list(rng.choice(mine, 2, replace=False)) + list(
                    rng.choice(other, 4, replace=False)
                )
                shown = [int(k) for k in rng.permutation(shown)]
                p = [0.8 if k in mine else 0.1 for k in shown]
                clicks = [int(rng.random() < q) for q in p]
                if not any(clicks):
                    clicks[int(np.argmax(p))] = 1
                imp += 1
                when = T0 + timedelta(days=day, hours=3 * slot, minutes=u)
                labelled = [(f"N{k}", c) for k, c in zip(shown, clicks, strict=True)]
                lines.append((str(imp), user, when, list(history[user]), labelled))
                history[user] += [n for n, c in labelled if c and n not in history[user]]
    return lines


def write_mind(directory: Path, *, n_users: int = 12, n_items: int = 40, **kw: int) -> Path:
    """news.tsv and behaviors.tsv of ``impression_lines`` under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    example_logs.write_news(directory / "news.tsv", item_rows(n_items))
    with (directory / "behaviors.tsv").open("w", encoding="utf-8") as f:
        for imp, user, when, hist, shown in impression_lines(n_users, n_items, **kw):
            listed = " ".join(f"{n}-{c}" for n, c in shown)
            f.write(f"{imp}\t{user}\t{when.strftime(MIND_TIME)}\t{' '.join(hist)}\t{listed}\n")
    return directory


def write_event_log(
    directory: Path,
    event_type: str = "click",
    *,
    n_users: int = 12,
    n_items: int = 40,
    per_user: int = 12,
    seed: int = 0,
) -> tuple[Path, Path]:
    """items.csv and events.csv: ``per_user`` ``event_type`` events per user, one an hour,
    five in six on the user's topic."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    items = directory / "items.csv"
    with items.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["item_id", "title", "description", "category"])
        w.writeheader()
        w.writerows(item_rows(n_items))
    events = directory / "events.csv"
    with events.open("w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(["user_id", "item_id", "event_type", "ts"])
        for u in range(n_users):
            mine = [k for k in range(n_items) if k % len(TOPICS) == user_topic(u)]
            other = [k for k in range(n_items) if k % len(TOPICS) != user_topic(u)]
            picks = [int(rng.choice(mine if j % 6 else other)) for j in range(per_user)]
            for j, k in enumerate(picks):
                when = T0 + timedelta(hours=j, minutes=u)
                out.writerow([f"V{u}", f"N{k}", event_type, when.isoformat() + "Z"])
    return items, events


# Realistic shape at test size: ~200 users, ~1,300 lists of 5-15 news (~13,000 impressions).
REALISTIC = {"n_users": 200, "n_items": 300, "seed": 3}


def realistic_mind(directory: Path) -> Path:
    """A MIND-format log of realistic shape (``recsys.cli.example_logs.write_mind``)."""
    return example_logs.write_mind(directory, n_days=5, **REALISTIC)


def realistic_events(directory: Path) -> tuple[Path, Path]:
    """items.csv (title, description, category, tags) + a click/purchase events.csv."""
    return example_logs.write_events(directory, n_days=20, **REALISTIC)


def realistic_texts() -> list[str]:
    """Every word the realistic items use (for a tiny BERT's vocabulary)."""
    world = example_logs.make_world(REALISTIC["n_users"], REALISTIC["n_items"], REALISTIC["seed"])
    return [" ".join(row.values()) for row in world.items]

"""Seeded synthetic interaction logs of realistic shape, written as the files users ingest.

``recsys ingest example mind DIR`` and ``recsys ingest example events DIR`` write them (and the
tests build theirs with the same functions, at test time: no data copies in the repository).

The world behind both logs:

- news-like items in eight categories (two subcategories each); a title and an abstract mostly
  use their category's words, mixed with common words and, one time in five, a word of another
  category, so text tells the category often but not always; each item has a popularity drawn
  from a log-normal;
- users whose interest is a Dirichlet(0.3) draw over the categories (one to three favourites),
  a few prior clicks each (the MIND history), and an activity level;
- a user engages with an item with probability ``sigmoid(-3.2 + 5 * interest[category] +
  0.6 * log popularity)``: category interest drives clicks, popularity helps.

``write_mind``: ``news.tsv`` + ``behaviors.tsv`` (days of served lists of 5-15 news sampled by
popularity; labels drawn from the click model, at least one click per list; the history column
grows with the user's clicks).  ``write_events``: ``items.csv`` (title, description, category,
tags) + ``events.csv`` (``click`` events drawn from the same model over a month, a quarter of
them followed by a ``purchase``), no ratings and no served lists.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

_WORDS = {  # category: (subcategories, its words)
    "sports": ("football tennis", "match goal league coach striker season final team cup injury"),
    "finance": (
        "markets banking",
        "stocks market bank rates earnings investors inflation shares bonds profit",
    ),
    "food": (
        "recipes restaurants",
        "recipe dinner kitchen bake flavour chef salad dessert spices bread",
    ),
    "travel": (
        "destinations airlines",
        "island flight beach hotel journey passport cruise museum mountains resort",
    ),
    "health": (
        "medicine fitness",
        "doctors vaccine sleep diet hospital patients workout therapy heart study",
    ),
    "tech": (
        "gadgets software",
        "phone software chip startup battery laptop app robot cloud privacy",
    ),
    "music": (
        "concerts albums",
        "album concert singer guitar tour band lyrics festival piano charts",
    ),
    "politics": (
        "elections policy",
        "senate election vote governor campaign law minister debate budget court",
    ),
}
CATEGORIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    name: (tuple(subs.split()), tuple(words.split())) for name, (subs, words) in _WORDS.items()
}
COMMON = tuple(
    "new week people city report year says first big home after why how best world local today "
    "could more life".split()
)
T0 = datetime(2019, 11, 9, 6, 0, 0)
MIND_TIME = "%m/%d/%Y %I:%M:%S %p"
FIELDS = ("item_id", "title", "description", "category", "tags")


@dataclass(frozen=True)
class World:
    """Items (texts, categories, popularity) and users (interests, activity) of one seed."""

    items: list[dict[str, str]]
    item_category: np.ndarray  # category index per item
    popularity: np.ndarray  # > 0, mean about 1
    interest: np.ndarray  # users x categories, rows sum to 1
    activity: np.ndarray  # per user, in (0, 1)

    def click_probability(self, user: int, items: np.ndarray) -> np.ndarray:
        """The engagement model of the module docstring, for one user and some items."""
        affinity = self.interest[user, self.item_category[items]]
        logit = -3.2 + 5.0 * affinity + 0.6 * np.log(self.popularity[items])
        return np.asarray(1.0 / (1.0 + np.exp(-logit)))


def make_world(n_users: int, n_items: int, seed: int) -> World:
    """The seeded items and users both logs are drawn from."""
    if n_users < 1 or n_items < len(CATEGORIES):
        raise ValueError(f"need >= 1 user and >= {len(CATEGORIES)} items")
    rng = np.random.default_rng(seed)
    names = list(CATEGORIES)
    category = rng.integers(0, len(names), n_items)
    items = [_item(k, names, int(category[k]), rng) for k in range(n_items)]
    popularity = rng.lognormal(0.0, 0.8, n_items)
    interest = rng.dirichlet(np.full(len(names), 0.3), n_users)
    activity = rng.beta(2.0, 2.0, n_users)
    return World(items, category, popularity / popularity.mean(), interest, activity)


def _item(k: int, names: list[str], cat: int, rng: np.random.Generator) -> dict[str, str]:
    name = names[cat]
    subs, words = CATEGORIES[name]

    def word() -> str:
        if rng.random() < 0.2:  # a word of another category: text is a strong hint, not a key
            other = names[int(rng.integers(0, len(names)))]
            return str(rng.choice(CATEGORIES[other][1]))
        return str(rng.choice(words))

    common = [str(w) for w in rng.choice(COMMON, 4, replace=False)]
    sub = subs[int(rng.integers(0, 2))]
    return {
        "item_id": f"N{k}",
        "title": f"{common[0].title()} {word()} {common[1]} {word()}",
        "description": f"The {word()} and the {word()}: {common[2]} {word()} {common[3]} {word()}.",
        "category": name,
        "subcategory": sub,
        "tags": f"{sub}|{word()}",
    }


def write_news(path: Path, items: Iterable[Mapping[str, str]]) -> None:
    """MIND's ``news.tsv``: id, category, subcategory (default ``<category>-news``), title,
    abstract, url and two empty entity lists per item."""
    with path.open("w", encoding="utf-8") as f:
        for row in items:
            fields = [
                row["item_id"],
                row["category"],
                row.get("subcategory") or f"{row['category']}-news",
                row["title"],
                row["description"],
                f"https://example.com/{row['item_id']}",
                "[]",
                "[]",
            ]
            f.write("\t".join(fields) + "\n")


def write_mind(
    directory: Path,
    *,
    n_users: int = 300,
    n_items: int = 600,
    n_days: int = 7,
    seed: int = 0,
) -> Path:
    """``news.tsv`` and ``behaviors.tsv`` under ``directory`` (MIND layout); returns it."""
    world = make_world(n_users, n_items, seed)
    rng = np.random.default_rng(seed + 1)
    directory.mkdir(parents=True, exist_ok=True)
    write_news(directory / "news.tsv", world.items)
    history = [_prior_clicks(world, u, rng) for u in range(n_users)]
    shown_p = world.popularity / world.popularity.sum()
    lines = []
    for day in range(n_days):
        for u in range(n_users):
            if rng.random() > world.activity[u]:
                continue
            for _ in range(1 + int(rng.poisson(2 * world.activity[u]))):
                shown = rng.choice(n_items, int(rng.integers(5, 16)), replace=False, p=shown_p)
                p = world.click_probability(u, shown)
                clicks = rng.random(len(shown)) < p
                if not clicks.any():
                    clicks[int(np.argmax(p))] = True
                when = T0 + timedelta(days=day, seconds=int(rng.integers(0, 16 * 3600)))
                labelled = [(f"N{k}", int(c)) for k, c in zip(shown, clicks, strict=True)]
                lines.append((when, u, list(history[u]), labelled))
                history[u] += [n for n, c in labelled if c and n not in history[u]]
    lines.sort(key=lambda line: (line[0], line[1]))
    with (directory / "behaviors.tsv").open("w", encoding="utf-8") as f:
        for imp, (when, u, hist, labelled) in enumerate(lines, start=1):
            listed = " ".join(f"{n}-{c}" for n, c in labelled)
            f.write(f"{imp}\tU{u}\t{when.strftime(MIND_TIME)}\t{' '.join(hist)}\t{listed}\n")
    return directory


def _prior_clicks(world: World, user: int, rng: np.random.Generator) -> list[str]:
    n = int(rng.integers(2, 9))
    weights = world.click_probability(user, np.arange(len(world.items)))
    picks = rng.choice(len(world.items), n, replace=False, p=weights / weights.sum())
    return [f"N{k}" for k in picks]


def write_events(
    directory: Path,
    *,
    n_users: int = 400,
    n_items: int = 800,
    n_days: int = 30,
    seed: int = 0,
) -> tuple[Path, Path]:
    """``items.csv`` and ``events.csv`` (``click`` and ``purchase``) under ``directory``."""
    world = make_world(n_users, n_items, seed)
    rng = np.random.default_rng(seed + 2)
    directory.mkdir(parents=True, exist_ok=True)
    items = directory / "items.csv"
    with items.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(world.items)
    events = directory / "events.csv"
    with events.open("w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(["user_id", "item_id", "event_type", "ts"])
        for u in range(n_users):
            weights = world.click_probability(u, np.arange(n_items))
            n = 4 + int(rng.poisson(30 * world.activity[u]))
            picks = rng.choice(n_items, min(n, n_items), replace=False, p=weights / weights.sum())
            times = np.sort(rng.uniform(0, n_days * 86400, len(picks)))
            for k, t in zip(picks, times, strict=True):
                when = T0 + timedelta(seconds=float(t))
                out.writerow([f"V{u}", f"N{k}", "click", when.isoformat() + "Z"])
                if rng.random() < 0.25:
                    later = when + timedelta(minutes=int(rng.integers(1, 120)))
                    out.writerow([f"V{u}", f"N{k}", "purchase", later.isoformat() + "Z"])
    return items, events

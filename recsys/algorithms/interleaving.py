"""Team-draft interleaving of two rankings (Radlinski, Kurup and Joachims, CIKM 2008).

Two rankers (the champion and a challenger) each propose a ranked list for the same request.
The served list is drafted like picking teams: in each round a coin flip decides which ranker
picks first, then each ranker adds its best item that is not in the list yet.  Every item
remembers the team that picked it, so a click credits exactly one ranker; per list the ranker
whose items were clicked more often wins (ties say nothing).  Because both rankers get the same
share of the top positions in expectation, a user's position bias does not favour either.

The coin is seeded from the recommendation id, so the same request id always gives the same
list and teams (tests, and re-deriving a list from the log).  Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from recsys.core.rules import CHALLENGER_TEAM, CHAMPION_TEAM

TEAMS: tuple[str, str] = (CHAMPION_TEAM, CHALLENGER_TEAM)


@dataclass(frozen=True)
class Interleaved:
    """A drafted list: ``items[i]`` was picked by ``teams[i]`` (``CHAMPION_TEAM`` or
    ``CHALLENGER_TEAM``)."""

    items: tuple[str, ...]
    teams: tuple[str, ...]

    def team_of(self) -> dict[str, str]:
        return dict(zip(self.items, self.teams, strict=True))


def seed_for(recommendation_id: str) -> int:
    """A stable 64-bit seed from a recommendation id (the same on every machine and run)."""
    return int.from_bytes(hashlib.sha256(recommendation_id.encode("utf-8")).digest()[:8], "big")


def team_draft(
    champion: Sequence[str], challenger: Sequence[str], k: int, seed: int
) -> Interleaved:
    """Interleave two ranked lists of item ids into at most ``k`` items (team draft).

    Each round with both teams of equal size flips a seeded coin for who picks first; a team
    with fewer items picks next otherwise.  A team picks its highest-ranked item not yet in the
    list; when one ranking runs out the other fills the remaining places.  No duplicates; the
    result is shorter than ``k`` only when the two lists together hold fewer distinct items.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0; got {k}")
    rng = random.Random(seed)
    lists = (list(champion), list(challenger))
    cursor = [0, 0]
    taken: set[str] = set()
    items: list[str] = []
    teams: list[str] = []
    sizes = [0, 0]

    def next_item(side: int) -> str | None:
        ranking = lists[side]
        while cursor[side] < len(ranking) and ranking[cursor[side]] in taken:
            cursor[side] += 1
        return ranking[cursor[side]] if cursor[side] < len(ranking) else None

    while len(items) < k:
        if sizes[0] != sizes[1]:
            side = 0 if sizes[0] < sizes[1] else 1
        else:
            side = rng.randrange(2)  # the round's coin flip: who picks first
        item = next_item(side)
        if item is None:  # this team has nothing left: the other one picks
            side = 1 - side
            item = next_item(side)
            if item is None:
                break
        taken.add(item)
        items.append(item)
        teams.append(TEAMS[side])
        sizes[side] += 1
    return Interleaved(tuple(items), tuple(teams))


def list_winner(teams: Mapping[str, str], clicked: Sequence[str]) -> str | None:
    """The team credited with more of the ``clicked`` items of one list; ``None`` on a tie.

    ``teams`` maps each served item to its team; clicks on items not in the list are ignored
    and an item clicked several times counts once.
    """
    counts = dict.fromkeys(TEAMS, 0)
    for item in set(clicked):
        team = teams.get(item)
        if team is not None:
            counts[team] += 1
    return winner(counts[CHAMPION_TEAM], counts[CHALLENGER_TEAM])


def winner(champion_clicks: int, challenger_clicks: int) -> str | None:
    """The team with more clicked items in one list; ``None`` on a tie (no preference)."""
    if champion_clicks == challenger_clicks:
        return None
    return CHAMPION_TEAM if champion_clicks > challenger_clicks else CHALLENGER_TEAM

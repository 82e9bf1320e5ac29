"""Declared ranges of settings, checked by pydantic whatever the source (TOML, env, CLI).

A setting's type in ``recsys.core.config`` may carry its range as ``Annotated`` metadata
(``Port``, ``PositiveInt``, ``OneOf("pairs", "tower")``, ...); ``check`` validates one value
against it and words the failure for a person: the key, where the value came from, and what
a valid one looks like.
"""

from __future__ import annotations

import difflib
import functools
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]  # a share in (0, 1]
Ratio = Annotated[float, Field(ge=0, le=1)]  # a share in [0, 1]
Port = Annotated[int, Field(ge=0, le=65535)]  # 0: any free port (tests)
Workers = Annotated[int, Field(ge=1, le=256)]


@dataclass(frozen=True)
class OneOf:
    """A string setting limited to ``choices``."""

    choices: tuple[str, ...]

    def __init__(self, *choices: str) -> None:
        object.__setattr__(self, "choices", tuple(choices))


def check(annotated: Any, value: Any) -> str | None:
    """None when ``value`` fits the range declared on ``annotated``, else what is wrong."""
    if typing.get_origin(annotated) is not Annotated:
        return None
    for meta in annotated.__metadata__:
        if isinstance(meta, OneOf) and value not in meta.choices:
            return f"must be one of {', '.join(meta.choices)}"
    try:
        _adapter(annotated).validate_python(value)
    except ValidationError as exc:
        return "; ".join(_word(err) for err in exc.errors())
    return None


@functools.cache
def _adapter(annotated: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotated)


def _word(err: Any) -> str:
    ctx = err.get("ctx") or {}
    for key, text in (
        ("ge", "must be at least {}"),
        ("gt", "must be greater than {}"),
        ("le", "must be at most {}"),
        ("lt", "must be less than {}"),
    ):
        if key in ctx and err["type"].endswith(("_equal", "_than")):
            return text.format(ctx[key])
    return str(err.get("msg", "invalid value"))


def did_you_mean(key: str, valid: Iterable[str]) -> str:
    """`` did you mean 'x'?`` for the closest valid key, else the keys of the same section."""
    keys = sorted(valid)
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not close:  # a typo in the section or a missing section: compare the last part alone
        name = key.rpartition(".")[2]
        close = [k for k in keys if difflib.get_close_matches(name, [k.rpartition(".")[2]], 1, 0.8)]
    if close:
        return f"did you mean {close[0]!r}?"
    section = key.partition(".")[0] + "."
    same = [k for k in keys if k.startswith(section)]
    if same:
        return f"the {section[:-1]} settings are: {', '.join(same)}"
    return "see the [sections] and keys in the README's Configuration table"

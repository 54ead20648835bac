"""A pydantic ValidationError as the one line a user reads, for every shape the project checks.

params.yaml (facegan.params), the files stages hand each other (facegan.handoff) and a model's arch
section given as a mapping (models.arch_settings) are checked by pydantic, and each refusal is one line:
what is wrong, where, and the fix. What is wrong is worked out here, once, as a `Problem`: a key missing,
a key unknown, a value its rule refuses or a value of another type, with the key, the value and what the
value must be, in words. Where it is and what to do differ by design (a param is named as params.yaml
or its profile writes it and is fixed there; a hand-off names its file and the stage that writes it
again), so each caller passes `one_line` its `say`: a few lines from the Problem to the sentence.

Nothing here imports pydantic: the errors are read as `ValidationError.errors()` lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

SPOKEN = {  # pydantic's type errors, as "must be ..." ends
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true/false",
    "string_type": "a string",
    "list_type": "a list",
}
KINDS = {  # pydantic's error type -> the kind of refusal
    "missing": "missing",
    "extra_forbidden": "unknown",
    "rule": "rule",  # facegan.settings.Rule: `ctx["allowed"]` completes "must be ..."
    "finite_number": "rule",
    "model_type": "mapping",
    "dict_type": "mapping",
}


@dataclass(frozen=True)
class Problem:
    """The first error of a ValidationError, and the key errors of the top level among all of them."""

    kind: Literal["missing", "unknown", "rule", "mapping", "type"]  # rule: the right type, a value refused
    loc: tuple[str | int, ...]  # where pydantic found it, from the top of the checked mapping
    input: Any  # the value refused, as pydantic saw it (one item, where a list's item is refused)
    must: str  # what the value must be, in words: "an integer", "a list of numbers", "a power of two ..."
    message: str  # pydantic's own words: "Field required", "Input should be a valid integer, ..."
    missing: tuple[str, ...]  # every key the top level lacks, over all the errors, sorted
    unknown: tuple[str, ...]  # every key the top level has and may not, sorted

    @property
    def key(self) -> str:
        """The whole location, dotted: `history.0.kimg`."""
        return ".".join(str(part) for part in self.loc)

    @property
    def field_loc(self) -> tuple[str | int, ...]:
        """The location of the field: a refused item of a list is the list's problem."""
        loc = self.loc
        while loc and isinstance(loc[-1], int):
            loc = loc[:-1]
        return loc

    @property
    def field(self) -> str:
        return ".".join(str(part) for part in self.field_loc)


def problem_of(errors: list[dict]) -> Problem:
    """The Problem of pydantic's `errors` (`ValidationError.errors()`), which must hold one or more."""
    first = errors[0]
    kind = KINDS.get(first["type"], "type")
    loc = tuple(first["loc"])
    if first["type"] == "rule":
        must = first["ctx"]["allowed"]
    elif first["type"] == "finite_number":
        must = "a finite number"
    elif kind == "mapping":
        must = "a mapping"
    elif kind == "type":
        must = SPOKEN.get(first["type"], first["msg"].lower())
        if loc and isinstance(loc[-1], int):  # an item of a list: speak of the list
            plural = must.split(" ", 1)[-1].replace("number", "numbers").replace("integer", "integers")
            must = f"a list of {plural}"
    else:
        must = ""
    top = [e for e in errors if len(e["loc"]) == 1]
    return Problem(
        kind=kind,
        loc=loc,
        input=first.get("input"),
        must=must,
        message=first["msg"],
        missing=tuple(sorted(str(e["loc"][0]) for e in top if e["type"] == "missing")),
        unknown=tuple(sorted(str(e["loc"][0]) for e in top if e["type"] == "extra_forbidden")),
    )


def one_line(err, say: Callable[[Problem], str]) -> str:
    """A pydantic ValidationError as one line: `say` words its Problem, naming where it is and the fix."""
    return say(problem_of(err.errors()))

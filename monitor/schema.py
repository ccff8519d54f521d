"""What every pydantic schema of the project shares: unknown keys are errors, and one rule for names."""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

# Source and sink names become folder names (quarantine, state, outbox) and metric labels: letters,
# digits and `_.-`, not starting with a dot or a dash, so `.`, `..` and hidden names can never leave or hide
# in their folder, and no slash can ever appear.
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
EnvName = Annotated[str, Field(pattern=ENV_NAME_PATTERN)]


class StrictModel(BaseModel):
    """A schema that refuses unknown keys, so a typo is an error that names the key."""

    model_config = ConfigDict(extra="forbid")


def key_path(loc: tuple[Any, ...], tags: Collection[str] = ()) -> str:
    """A pydantic error location as the key path a person reads: ``sources[1].fps``.

    `tags` are discriminator tags: pydantic puts them in the location after a list index, but they are
    not keys of the file.
    """
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in tags and parts and parts[-1].endswith("]"):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def error_message(err: Any) -> str:
    """The message of one pydantic error, without pydantic's "Value error, " prefix."""
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "value_error":
        return str(err["ctx"]["error"])
    if err["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a mapping of keys to values"
    return str(err["msg"])

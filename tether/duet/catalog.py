"""`duet.store`'s catalog: what the owner published, as the owner described it.

An entry is `{"id": ..., "tags": [...], "description": ...}` and nothing else: the scientist
learns of the owner's objects only what the owner wrote about them.
"""

from __future__ import annotations

from typing import Any

COLUMNS = ["id", "tags", "description"]


def entry(obj_id: str, tags: tuple[str, ...], description: str) -> dict:
    return {"id": obj_id, "tags": list(tags), "description": description}


def select(entries: list[dict], key: int | str) -> dict:
    """The entry at a position, with an id, or with a tag (which must name one entry)."""
    if isinstance(key, int):
        if not -len(entries) <= key < len(entries):
            raise IndexError(f"the store holds {len(entries)} objects; there is no [{key}]")
        return entries[key]
    if not isinstance(key, str):
        raise TypeError(f"index the store by position, id or tag, not {type(key).__name__}")
    for found in entries:
        if found["id"] == key:
            return found
    tagged = [found for found in entries if key in found["tags"]]
    if len(tagged) == 1:
        return tagged[0]
    if tagged:
        raise KeyError(
            f"{len(tagged)} objects are tagged {key!r} (ids "
            f"{', '.join(t['id'] for t in tagged)}): index by id"
        )
    raise KeyError(
        f"no object in the store has id or tag {key!r}; it holds: "
        f"{describe(entries) or 'nothing yet'}"
    )


def describe(entries: list[dict]) -> str:
    return "; ".join(f"{e['id']} {e['tags']}" for e in entries)


def table(entries: list[dict]) -> Any:
    """The catalog as a pandas DataFrame: id, tags, description."""
    import pandas as pd

    return pd.DataFrame(entries, columns=COLUMNS)

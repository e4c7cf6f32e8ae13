"""Turns the user's `--inputs` / `--teachers` / `--modalities` names into cache teacher keys, with checks.

A name is a teacher key, or a modality ("rgb", "flow", "audio", "fusion", ...) that resolves to the
one teacher of that modality that has what is asked for (features for inputs, logits for teachers).
"""

from __future__ import annotations

import zarr

from egodistill import cache
from egodistill.cache.errors import CacheError


class SourceError(CacheError):
    """An input or teacher name that does not resolve to exactly one usable cache teacher."""


def split_names(names: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """"rgb,flow" or ["rgb", "flow"] -> ["rgb", "flow"] (empty names dropped, order kept, no repeats)."""
    if names is None:
        return []
    if isinstance(names, str):
        names = names.split(",")
    out: list[str] = []
    for name in (n.strip() for n in names):
        if name and name not in out:
            out.append(name)
    return out


def _resolve(root: zarr.Group, name: str, what: str, wanted, option: str) -> str:
    keys = cache.list_teachers(root)
    if name in keys:
        if not wanted(cache.open_teacher(root, name)):
            raise SourceError(f"teacher {name!r} has no {what}: pick another for {option} (`egodistill cache info` lists them)")
        return name
    matches = [k for k in keys if cache.teacher_info(cache.open_teacher(root, k))["modality"] == name and wanted(cache.open_teacher(root, k))]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        have = sorted({cache.teacher_info(cache.open_teacher(root, k))["modality"] for k in keys if wanted(cache.open_teacher(root, k))})
        hint = "run `egodistill fit-teachers` first" if what == "logits" else "run `egodistill extract` for it first"
        raise SourceError(f"{option} {name!r}: no teacher of that key or modality with {what} in the cache (modalities with {what}: {', '.join(have) or 'none'}): {hint}")
    raise SourceError(f"{option} {name!r} is ambiguous, the cache has several teachers of that modality with {what}: {', '.join(matches)}: pass one key instead")


def resolve_inputs(root: zarr.Group, names: list[str], option: str = "--inputs") -> list[str]:
    """Keys of teachers with frame features, one per name."""
    if not names:
        raise SourceError(f"{option} is empty: name at least one modality or teacher key")
    keys = [_resolve(root, n, "features", cache.has_features, option) for n in names]
    return _unique(keys, option)


def resolve_teachers(root: zarr.Group, names: list[str], heads: dict[str, int]) -> list[str]:
    """Keys of teachers with logits for every output head of the cache, all with its class counts."""
    keys = _unique([_resolve(root, n, "logits", lambda t: bool(cache.logit_heads(t)), "--teachers") for n in names], "--teachers")
    for key in keys:
        have = cache.logit_heads(cache.open_teacher(root, key))
        for head, classes in heads.items():
            if head not in have:
                raise SourceError(f"teacher {key!r} has no logits for head {head!r} (it has {', '.join(have)}): choose teachers fitted on this cache's heads")
            if have[head] != classes:
                raise SourceError(
                    f"teacher {key!r} has {have[head]} classes for head {head!r}, the cache's labels have {classes}: "
                    "its logits belong to another label set, drop it from --teachers"
                )
    return keys


def _unique(keys: list[str], option: str) -> list[str]:
    if len(set(keys)) != len(keys):
        raise SourceError(f"{option} names the same teacher twice ({', '.join(keys)}): list each once")
    return keys

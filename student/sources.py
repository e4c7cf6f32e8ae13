"""Turns the user's `--inputs` / `--teachers` / `--modalities` names into cache teacher keys, with checks.

A name is a teacher key, or a modality ("rgb", "flow", "audio", "fusion", ...) that resolves to the
one teacher of that modality that has what is asked for (features for inputs, logits for teachers).
"""

from __future__ import annotations

from egodistill import cache
from egodistill.common import CacheError


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


def split_numbers(text: str, option: str) -> tuple[int, ...]:
    """"0,1" -> (0, 1); anything that is not a comma-separated list of whole numbers >= 0 is a one-line error."""
    try:
        numbers = tuple(int(part) for part in split_names(text))
    except ValueError:
        numbers = ()
    if not numbers or min(numbers) < 0:
        raise SourceError(f"{option} {text!r}: give comma-separated whole numbers >= 0, e.g. 0,1")
    return numbers


def _resolve(opened: cache.Cache, name: str, what: str, wanted, option: str) -> str:
    teachers = {t.key: t for t in opened.teachers()}
    if name in teachers:
        if not wanted(teachers[name]):
            raise SourceError(f"teacher {name!r} has no {what}: pick another for {option} (`egodistill cache info` lists them)")
        return name
    matches = [k for k, t in teachers.items() if t.modality == name and wanted(t)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        have = sorted({t.modality for t in teachers.values() if wanted(t)})
        hint = {"logits": "run `egodistill fit-teachers` first", "frames": "run `egodistill extract --modality frames` first"}.get(what, "run `egodistill extract` for it first")
        raise SourceError(f"{option} {name!r}: no teacher of that key or modality with {what} in the cache (modalities with {what}: {', '.join(have) or 'none'}): {hint}")
    raise SourceError(f"{option} {name!r} is ambiguous, the cache has several teachers of that modality with {what}: {', '.join(matches)}: pass one key instead")


def resolve_inputs(opened: cache.Cache, names: list[str], option: str = "--inputs") -> list[str]:
    """Keys of teachers with frame features, one per name."""
    if not names:
        raise SourceError(f"{option} is empty: name at least one modality or teacher key")
    keys = [_resolve(opened, n, "features", lambda t: t.has_features, option) for n in names]
    return _unique(keys, option)


def resolve_frames(opened: cache.Cache, names: list[str]) -> str | None:
    """The key of the frames teacher an end-to-end student reads, when `--inputs` names frames ("frames",
    or the key of a teacher that stores frames); None when the inputs are features."""
    stored = {t.key: t for t in opened.teachers()}
    if not any(n == "frames" or (n in stored and stored[n].has_frames) for n in names):
        return None
    if len(names) > 1:
        raise SourceError(f"--inputs {','.join(names)}: an end-to-end student reads frames alone; pass --inputs frames, or feature inputs without frames")
    return _resolve(opened, names[0], "frames", lambda t: t.has_frames, "--inputs")


def resolve_teachers(opened: cache.Cache, names: list[str], heads: dict[str, int], option: str = "--teachers") -> list[str]:
    """Keys of teachers with logits for every output head of the cache, all with its class counts. `option`: what
    the errors call the names (the CLI's option, or the Python API's argument)."""
    keys = _unique([_resolve(opened, n, "logits", lambda t: bool(t.heads), option) for n in names], option)
    for key in keys:
        have = opened.teacher(key).heads
        for head, classes in heads.items():
            if head not in have:
                raise SourceError(f"teacher {key!r} has no logits for head {head!r} (it has {', '.join(have)}): choose teachers fitted on this cache's heads")
            if have[head] != classes:
                raise SourceError(
                    f"teacher {key!r} has {have[head]} classes for head {head!r}, the cache's labels have {classes}: "
                    f"its logits belong to another label set, drop it from {option}"
                )
    return keys


def _unique(keys: list[str], option: str) -> list[str]:
    if len(set(keys)) != len(keys):
        raise SourceError(f"{option} names the same teacher twice ({', '.join(keys)}): list each once")
    return keys

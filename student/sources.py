"""Turns the user's `--inputs` / `--teachers` / `--modalities` names into cache teacher keys, with checks, and a
teacher's recorded weights back into what rebuilds its backbone (`recorded_weights`, `recorded_seed`).

A name is a teacher key, or a modality ("rgb", "flow", "audio", "fusion", ...) that resolves to the
one teacher of that modality that has what is asked for (features for inputs, logits for teachers).
"""

from __future__ import annotations

from pathlib import Path

from egodistill import cache
from egodistill.common import CacheError, file_sha256


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


def teacher_name(opened: cache.Cache, key: str) -> str:
    """What `--teachers` should be told for the teacher `key`: its modality where that names it alone, else the key."""
    modality = opened.teacher(key).modality
    try:
        return modality if _resolve(opened, modality, "logits", lambda t: bool(t.heads), "--teachers") == key else key
    except SourceError:  # several teachers of that modality have logits
        return key


def _unique(keys: list[str], option: str) -> list[str]:
    if len(set(keys)) != len(keys):
        raise SourceError(f"{option} names the same teacher twice ({', '.join(keys)}): list each once")
    return keys


def recorded_weights(teachers: list, given: list[str]) -> list[str | None]:
    """What rebuilds each teacher's backbone (`create_backbone`'s weights): None for a random init (its seed:
    `recorded_seed`) or a teacher without a model (frames), "timm" for timm's own pretrained weights, or the file
    among `given` (--weights) whose sha256 its provenance records. SourceError, naming both hashes, for a file
    that differs; also for a missing file, and for a file that none of the teachers was extracted with (a random
    init's or a model-less teacher's included). predict (new videos), export and train-student's --init-from all
    rebuild teachers' backbones through this."""
    absent = [w for w in given if not Path(w).is_file()]
    if absent:
        raise SourceError(f"--weights {absent[0]}: no such file: give the weights file the teacher was extracted with")
    by_hash = {file_sha256(w): w for w in given}
    out: list[str | None] = []
    for teacher in teachers:
        recorded = str(teacher.provenance.weights)
        if teacher.provenance.weights is None or recorded.startswith("random-init:"):
            out.append(None)
        elif recorded.startswith("timm-pretrained:"):
            out.append("timm")
        elif recorded in by_hash:
            out.append(by_hash[recorded])
        elif given:
            found = ", ".join(f"{w} ({h})" for h, w in by_hash.items())
            raise SourceError(f"teacher {teacher.key} was extracted with weights {recorded}; --weights gave {found}: give the weights file it was extracted with")
        else:
            raise SourceError(f"teacher {teacher.key} was extracted with the weights file {recorded}: give that file again with --weights FILE")
    unused = [w for h, w in by_hash.items() if w not in out]
    if unused:
        origins = "; ".join(f"teacher {t.key} {_weights_origin(t.provenance)}" for t in teachers)
        raise SourceError(f"--weights {unused[0]} is no input teacher's weights file ({origins}): drop --weights")
    return out


def _weights_origin(p: cache.Provenance) -> str:
    """How a teacher's backbone got its weights, for a message."""
    recorded = str(p.weights)
    if p.weights is None:
        return f"runs no model (its rows are the stored {p.modality})"
    if recorded.startswith("random-init:"):
        return f"was extracted with random-init weights (seed {recorded_seed(recorded)})"
    if recorded.startswith("timm-pretrained:"):
        return "was extracted with timm's own pretrained weights"
    return f"was extracted with the weights file {recorded}"


def recorded_seed(weights: str | None) -> int:
    """The seed of a random-init teacher's recorded weights (\"random-init:<seed>\"); 0 for any other."""
    text = str(weights)
    return int(text.split(":", 1)[1]) if text.startswith("random-init:") and text.split(":", 1)[1].lstrip("-").isdigit() else 0

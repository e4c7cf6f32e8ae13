"""How the names in a box file or an imported feature file find the manifest's videos (or segments).

A dataset's side files name videos as the dataset ships them (Something-Else's boxes: `d0000`; an
HDF5 of features: `P01/P01_11`), while a manifest may name files (`d0000.mp4`). A name matches a
video, in this order:
  1. by id: the name is the video exactly as the manifest writes it;
  2. by file stem: the last path part without its extension is the same on both sides
     (`d0000` and `clips/d0000.mp4`), when that stem is one video's and one name's only;
  3. by relative path: the name, without extension, is the video's path without extension, as the
     manifest writes it or as found under --videos (`P01/videos/P01_11`).
README.md and docs/cache-format.md state the same rule.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath

_EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,4}$")  # ".mp4", ".MP4", ".webm"; not the ".2" of an id "v1.2"


def _without_extension(name: str) -> str:
    text = str(name).replace("\\", "/")
    return _EXTENSION.sub("", text[2:] if text.startswith("./") else text)


def _stem(name: str) -> str:
    return PurePosixPath(_without_extension(name)).name


def match_names(names: Iterable[str], videos: Iterable[str], paths: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """video (as the manifest writes it) -> the name of `names` that is it, by id, file stem or relative path
    (`paths`: video -> its file relative to --videos, where known); videos no name matches are left out."""
    names = list(dict.fromkeys(map(str, names)))
    videos = list(dict.fromkeys(map(str, videos)))
    exact = set(names)
    name_stems = Counter(_stem(n) for n in names)
    by_stem = {_stem(n): n for n in names if name_stems[_stem(n)] == 1}
    video_stems = Counter(_stem(v) for v in videos)
    by_path = {_without_extension(n): n for n in names}
    matched = {}
    for video in videos:
        if video in exact:
            matched[video] = video
        elif video_stems[_stem(video)] == 1 and _stem(video) in by_stem:
            matched[video] = by_stem[_stem(video)]
        else:
            for path in (video, (paths or {}).get(video)):
                if path is not None and _without_extension(path) in by_path:
                    matched[video] = by_path[_without_extension(path)]
                    break
    return matched


def mismatch_note(what: str, names: Iterable[str], videos: Iterable[str], matched: Mapping[str, str], segments: Iterable[str]) -> str | None:
    """One line when most segments' videos (`segments`: each segment's video) match no name of `what`, with an
    example of each side's names; None when most match."""
    segments = list(segments)
    found = sum(video in matched for video in segments)
    if not segments or found * 2 > len(segments):
        return None
    unmatched = [v for v in dict.fromkeys(segments) if v not in matched][:2]
    return (f"{len(segments) - found} of {len(segments)} segments find no {what}: the manifest's videos (e.g. {', '.join(unmatched)}) "
            f"match no name in it (e.g. {', '.join(list(dict.fromkeys(names))[:2])}); names match by id, file stem or relative path")

"""Reading EPIC-KITCHENS-100, Something-Something v2 and generic manifests, and finding their videos."""

import json
import math
import re
import time
from pathlib import Path

import pytest

from egodistill.common import ManifestError
from egodistill.extract.manifests import Manifest, Segment, read_manifest, resolve_video, resolve_videos

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real"

EPIC_HEADER = (
    "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
    "start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes"
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def touch(path: Path) -> Path:
    return write(path, "")


# --- generic CSV ---------------------------------------------------------------------------------


def test_generic_csv_with_labels(tmp_path):
    csv = write(
        tmp_path / "clips.csv",
        "segment_id,video,start_sec,stop_sec,split,label:action,label:object\n"
        "a,cam1/day1.mp4,0,2.5,train,3,0\n"
        "b,cam1/day1.mp4,2.5,,train,,1\n"
        "\n"
        "c,day2.mkv,,4,val,0,\n",
    )
    m = read_manifest(csv)

    assert isinstance(m, Manifest)
    assert (m.path, m.format) == (str(csv), "generic")
    assert list(m.heads.items()) == [("action", 4), ("object", 2)]
    assert m.segments[0] == Segment("a", "cam1/day1.mp4", 0.0, 2.5, "train", {"action": 3, "object": 0})
    b = m.segments[1]
    assert b.start_sec == 2.5 and math.isnan(b.stop_sec) and b.labels == {"action": -1, "object": 1}
    assert m.segments[2].start_sec == 0.0 and m.segments[2].split == "val"

    videos = tmp_path / "videos"
    day1 = touch(videos / "cam1" / "day1.mp4")
    assert resolve_video(m, "cam1/day1.mp4", videos) == day1
    assert resolve_videos(m, videos) == {"cam1/day1.mp4": day1, "day2.mkv": None}


def test_generic_csv_without_labels(tmp_path):
    m = read_manifest(write(tmp_path / "m.csv", "segment_id,video,start_sec,stop_sec,split\nx,v.mp4,1,2,test\n"))
    assert m.heads == {}
    assert m.segments == [Segment("x", "v.mp4", 1.0, 2.0, "test", {})]


def test_generic_head_with_no_labels_still_has_one_class(tmp_path):
    m = read_manifest(write(tmp_path / "m.csv", "segment_id,video,start_sec,stop_sec,split,label:action\nx,v.mp4,0,1,train,\n"))
    assert m.heads == {"action": 1}
    assert m.segments[0].labels == {"action": -1}


@pytest.mark.parametrize("video", ["/etc/passwd", "../outside.mp4", "a/../../outside.mp4"])
def test_generic_video_outside_the_root_is_refused_at_read(tmp_path, video):
    csv = write(tmp_path / "m.csv", f"segment_id,video,start_sec,stop_sec,split\nok,in.mp4,0,1,train\nbad,{video},0,1,train\n")
    with pytest.raises(ManifestError, match=rf"^{re.escape(str(csv))}:3: video '{re.escape(video)}' .*--videos$"):
        read_manifest(csv)


def test_generic_video_escaping_through_a_symlink_is_refused(tmp_path):
    outside = touch(tmp_path / "secret" / "x.mp4")
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "link").symlink_to(outside.parent)
    m = read_manifest(write(tmp_path / "m.csv", "segment_id,video,start_sec,stop_sec,split\ns,link/x.mp4,0,1,train\n"))
    with pytest.raises(ManifestError, match=r"video 'link/x.mp4' leads outside the videos folder"):
        resolve_videos(m, videos)


def test_generic_symlink_inside_the_root_is_followed(tmp_path):
    videos = tmp_path / "videos"
    real = touch(videos / "store" / "x.mp4")
    (videos / "alias").symlink_to(real.parent)
    m = read_manifest(write(tmp_path / "m.csv", "segment_id,video,start_sec,stop_sec,split\ns,alias/x.mp4,0,1,train\n"))
    assert resolve_video(m, "alias/x.mp4", videos) == videos / "alias" / "x.mp4"


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("s,v.mp4,abc,2,train,0", "start_sec 'abc' is not a number"),
        ("s,v.mp4,0,inf,train,0", "stop_sec 'inf' is not a number"),
        ("s,v.mp4,3,2,train,0", "stop_sec 2 is not after start_sec 3"),
        ("s,v.mp4,-1,2,train,0", "start_sec -1 is negative"),
        ("s,v.mp4,0,2,train,-2", "label:action '-2' is not a class index"),
        ("s,v.mp4,0,2,train,1.5", "label:action '1.5' is not a class index"),
        ("s,v.mp4,0,2", "4 fields where the header has 6"),
        ("s,,0,2,train,1", "video is empty"),
        (",v.mp4,0,2,train,1", "segment_id is empty"),
        ("s,v.mp4,0,2,,1", "split is empty"),
    ],
)
def test_generic_malformed_row_names_file_and_line(tmp_path, row, reason):
    csv = write(tmp_path / "bad.csv", f"segment_id,video,start_sec,stop_sec,split,label:action\nok,v.mp4,0,1,train,0\n{row}\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(csv)
    message = str(err.value)
    assert message.startswith(f"{csv}:3: {reason}")
    assert "\n" not in message and ": " in message.removeprefix(f"{csv}:3: {reason}")  # says what to do


def test_generic_duplicate_ids_name_both_lines(tmp_path):
    csv = write(tmp_path / "m.csv", "segment_id,video,start_sec,stop_sec,split\na,v.mp4,0,1,train\nb,v.mp4,1,2,train\na,v.mp4,2,3,train\n")
    with pytest.raises(ManifestError, match=rf"^{re.escape(str(csv))}:4: segment_id 'a' repeats line 2"):
        read_manifest(csv)


def test_generic_unknown_column_and_header_only(tmp_path):
    typo = write(tmp_path / "typo.csv", "segment_id,video,start_sec,stop_sec,split,labels:verb\n")
    with pytest.raises(ManifestError, match=r"column 'labels:verb' is not understood"):
        read_manifest(typo)
    header_only = write(tmp_path / "header.csv", "segment_id,video,start_sec,stop_sec,split\n")
    with pytest.raises(ManifestError, match=r"has no segments"):
        read_manifest(header_only)


# --- EPIC-KITCHENS-100 --------------------------------------------------------------------------------


def test_epic_csv(tmp_path):
    csv = write(
        tmp_path / "EPIC_100_train.csv",
        EPIC_HEADER + "\n"
        "P01_11_0,P01,P01_11,00:00:00.560,00:00:00.00,00:00:01.89,1,113,take plate,take,0,plate,2,['plate'],[2]\n"
        "P02_03_7,P02,P02_03,00:01:02.000,01:02:03.50,01:02:05.25,1,2,\"cut onion, slowly\",cut,7,onion,299,['onion'],[299]\n",
    )
    m = read_manifest(csv)

    assert m.format == "epic100"
    assert list(m.heads.items()) == [("verb", 97), ("noun", 300)]
    first, second = m.segments
    assert first == Segment("P01_11_0", "P01_11", 0.0, 1.89, "train", {"verb": 0, "noun": 2})
    assert second.start_sec == pytest.approx(3723.5) and second.stop_sec == pytest.approx(3725.25)
    assert second.labels == {"verb": 7, "noun": 299}

    videos = tmp_path / "videos"
    nested = touch(videos / "P01" / "videos" / "P01_11.MP4")
    flat_lower_case = touch(videos / "P02_03.mp4")
    assert resolve_video(m, "P01_11", videos) == nested
    assert resolve_videos(m, videos) == {"P01_11": nested, "P02_03": flat_lower_case}
    assert resolve_video(m, "P01_11", tmp_path / "elsewhere") is None


def test_epic_test_set_without_classes_is_unlabelled(tmp_path):
    header = "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,stop_frame"
    m = read_manifest(write(tmp_path / "EPIC_100_test_timestamps.csv", header + "\nP01_101_0,P01,P01_101,,00:00:01.00,00:00:02.00,50,100\n"))
    assert m.heads == {"verb": 97, "noun": 300}
    assert m.segments[0].labels == {"verb": -1, "noun": -1}
    assert m.segments[0].split == "test"


@pytest.mark.parametrize(
    ("start", "stop", "noun", "reason"),
    [
        ("00:61:00.00", "01:02:00.00", "2", "start_timestamp '00:61:00.00' is not a HH:MM:SS.ff timestamp"),
        ("00:00:01.00", "1.5", "2", "stop_timestamp '1.5' is not a HH:MM:SS.ff timestamp"),
        ("00:00:03.00", "00:00:02.00", "2", "stop_timestamp is before start_timestamp"),
        ("00:00:01.00", "00:00:02.00", "300", "noun_class 300 is out of range"),
    ],
)
def test_epic_bad_row_names_file_and_line(tmp_path, start, stop, noun, reason):
    good = "P01_11_0,P01,P01_11,,00:00:00.00,00:00:01.00,1,2,x,take,0,plate,2,[],[]"
    bad = f"P01_11_1,P01,P01_11,,{start},{stop},1,2,x,take,0,plate,{noun},[],[]"
    csv = write(tmp_path / "EPIC_100_validation.csv", f"{EPIC_HEADER}\n{good}\n{bad}\n")
    with pytest.raises(ManifestError, match=rf"^{re.escape(str(csv))}:3: {reason}"):
        read_manifest(csv)


# --- Something-Something v2 ------------------------------------------------------------------------


def ssv2_folder(folder: Path, entries: list[dict]) -> Path:
    labels = {"Approaching something with your camera": "0", "Putting something on a surface": "1", "Something falling like a rock": "2"}
    write(folder / "something-something-v2-labels.json", json.dumps(labels))
    return write(folder / "something-something-v2-validation.json", json.dumps(entries))


def test_ssv2_json(tmp_path):
    manifest = ssv2_folder(
        tmp_path / "ssv2",
        [
            {"id": "74225", "label": "putting a cup on a table", "template": "Putting [something] on a surface", "placeholders": ["cup"]},
            {"id": "1", "label": "a pen falling like a rock", "template": "[Something] falling like a rock", "placeholders": ["pen"]},
            {"id": "5"},  # test entries have no template
        ],
    )
    m = read_manifest(manifest)

    assert (m.format, m.heads) == ("ssv2", {"action": 3})
    first = m.segments[0]
    assert (first.id, first.video, first.start_sec, first.split, first.labels) == ("74225", "74225", 0.0, "val", {"action": 1})
    assert math.isnan(first.stop_sec)
    assert [s.labels["action"] for s in m.segments] == [1, 2, -1]

    videos = tmp_path / "videos"
    clip = touch(videos / "74225.webm")
    assert resolve_videos(m, videos) == {"74225": clip, "1": None, "5": None}


def test_ssv2_unknown_template_names_the_entry(tmp_path):
    manifest = ssv2_folder(tmp_path, [{"id": "1", "template": "Approaching [something] with your camera"}, {"id": "2", "template": "Juggling [something]"}])
    with pytest.raises(ManifestError, match=r"entry 1 \(id 2\): template 'Juggling \[something\]' is not in .*labels.json"):
        read_manifest(manifest)


def test_ssv2_labels_file_missing_or_ambiguous(tmp_path):
    manifest = write(tmp_path / "ssv2" / "train.json", json.dumps([{"id": "1", "template": "Closing [something]"}]))
    with pytest.raises(ManifestError, match=rf"no \*labels.json in {re.escape(str(manifest.parent))} "):
        read_manifest(manifest)
    write(manifest.parent / "a-labels.json", "{}")
    write(manifest.parent / "b-labels.json", "{}")
    with pytest.raises(ManifestError, match=r"more than one \*labels.json .*\(a-labels.json, b-labels.json\)"):
        read_manifest(manifest)


# --- any file ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    ["id,key,instances,category\n0,take,[],retrieve\n", '{"Closing something": "0"}', "[1, 2, 3]", "just some words\n"],
)
def test_unknown_format_says_what_is_understood(tmp_path, content):
    path = write(tmp_path / "annotations.csv", content)
    with pytest.raises(ManifestError, match=r"EPIC-KITCHENS-100 .*Something-Something v2 .*segment_id,video,start_sec,stop_sec,split"):
        read_manifest(path)


def test_missing_and_empty_manifest(tmp_path):
    with pytest.raises(ManifestError, match=rf"^manifest {re.escape(str(tmp_path / 'nope.csv'))} not found"):
        read_manifest(tmp_path / "nope.csv")
    with pytest.raises(ManifestError, match=r"is empty"):
        read_manifest(write(tmp_path / "empty.csv", ""))


# --- the real annotation files -----------------------------------------------------------------------


def real_file(relative: str) -> Path:
    path = REAL / relative
    if not path.is_file():
        pytest.skip(f"{path} is absent: the real annotation files are only on development machines")
    return path


def test_real_epic100_validation():
    started = time.perf_counter()
    m = read_manifest(real_file("epic100/EPIC_100_validation.csv"))
    assert time.perf_counter() - started < 2.0  # well under a second on a workstation; slack for slow CI
    assert m.format == "epic100" and len(m.segments) == 9668
    assert m.heads == {"verb": 97, "noun": 300}
    assert m.segments[0] == Segment("P01_11_0", "P01_11", 0.0, 1.89, "val", {"verb": 0, "noun": 2})
    assert all(0 <= s.labels["verb"] < 97 and 0 <= s.labels["noun"] < 300 for s in m.segments)
    assert all(0 <= s.start_sec <= s.stop_sec for s in m.segments)


def test_real_ssv2_validation():
    started = time.perf_counter()
    m = read_manifest(real_file("ssv2/something-something-v2-validation.json"))
    assert time.perf_counter() - started < 2.0
    assert m.format == "ssv2" and len(m.segments) == 24777
    assert m.heads == {"action": 174}
    assert all(0 <= s.labels["action"] < 174 for s in m.segments)
    assert {s.split for s in m.segments} == {"val"}

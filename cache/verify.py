"""`cache verify`: re-read every object a task record checksummed and name what changed.

Read-only: it opens nothing for writing and reads each stored object once. A task without a
record whose objects are already on disk was killed mid-write (or is running now): it is
reported as incomplete, and its rows are not data (docs/cache-format.md).

`repair_cache` (`cache verify --repair`) forgets the record of every task whose rows a damaged
object holds, so the extraction that made the teacher writes those tasks again, and deletes the damaged
objects themselves (no recorded row is left in them); nothing else.
"""

from __future__ import annotations

import zarr
from zarr.core.sync import sync

from egodistill.common import CacheError
from egodistill.cache.catalog import Cache
from egodistill.cache.extents import ExtendedTeacher
from egodistill.cache.checksums import ABSENT, digest, object_key, objects_along_rows, read_object, rows_digest
from egodistill.cache.shards import Layout
from egodistill.cache.teachers import Teacher


def verify_cache(cache: Cache, teachers: list[str] | None = None) -> dict:
    """{"ok": bool, "teachers": [per-teacher report]}; ok is False when any object changed or cannot be read."""
    reports = [verify_teacher(cache.teacher(key)) for key in (teachers or cache.teacher_keys())]
    return {"ok": all(not r["damaged"] for r in reports), "teachers": reports}


def repair_cache(cache: Cache, teachers: list[str] | None = None) -> dict:
    """Verify each teacher under its lease and forget the task records of whatever is damaged (cache opened "r+").

    The `verify_cache` report, each teacher's with `repair`: {"forgotten": [cache tasks], "segments": [[start, stop], ...],
    "remade_by": "extract" | "fit-teachers" | "import-h5", "not_forgotten": [findings of objects no task writes: offsets,
    the segments table], "refused": the lease's one line while an extraction holds the teacher, else None}.
    ok: nothing was refused and everything damaged was forgotten."""
    reports = []
    for key in teachers or cache.teacher_keys():
        handle = cache.teacher(key)
        try:
            with cache.lease(key):  # verified under the lease: no extraction writes between the check and the forgetting
                report = repair_teacher(handle)
        except CacheError as err:  # a live extraction is writing it: report what it holds now, forget nothing
            report = {**verify_teacher(handle), "repair": {"forgotten": [], "segments": [], "not_forgotten": [], "refused": str(err)}}
        report["repair"]["remade_by"] = _remade_by(handle)
        reports.append(report)
    ok = all(not r["repair"]["not_forgotten"] and not r["repair"]["refused"] for r in reports)
    return {"ok": ok, "teachers": reports}


def repair_teacher(handle: Teacher | ExtendedTeacher) -> dict:
    """`verify_teacher`'s report, with `repair` (see `repair_cache`) after dropping the records of every task with rows in a
    damaged object. The caller holds the teacher's lease."""
    extents = [(e.first_task, e.teacher) for e in handle.extents] if isinstance(handle, ExtendedTeacher) else [(0, handle)]
    parts = [(first, teacher, verify_teacher(teacher)) for first, teacher in extents]
    report = _merge([(first, r) for first, _, r in parts], handle.layout.tasks) if isinstance(handle, ExtendedTeacher) else parts[0][2]
    forgotten, not_forgotten = [], []
    for first, teacher, part in parts:
        tasks, objects, others = _tasks_holding(teacher, part["damaged"])
        teacher.drop_records(sorted(tasks))
        # Every row of these objects is now unrecorded, not data. A shard shared by tasks is rewritten by read-modify-write,
        # which fails on one that no longer decodes: delete the damaged object, so the rewrite starts from the fill value.
        store = teacher._group.store_path.store
        for key in objects:
            if sync(store.exists(key)):
                sync(store.delete(key))
        forgotten += [first + t for t in sorted(tasks)]
        not_forgotten += others
    segments: list[list[int]] = []  # the forgotten tasks' segments, as [start, stop) runs in cache numbers
    for task in forgotten:
        segs = handle.layout.task_segments(task)
        if segments and segments[-1][1] == segs.start:
            segments[-1][1] = segs.stop
        else:
            segments.append([segs.start, segs.stop])
    report["repair"] = {"forgotten": forgotten, "segments": segments, "not_forgotten": not_forgotten, "refused": None}
    return report


def _tasks_holding(handle: Teacher, damaged: list[dict]) -> tuple[set[int], set[str], list[dict]]:
    """Recorded tasks with rows in the damaged objects, those objects' store keys, and the findings of objects no task writes.

    A task is rewritten whole, but a shard shared by tasks (ragged `--fps` layouts) is rewritten
    only in the rows of the task that writes it: every task with rows in it is forgotten."""
    teacher, layout = handle._group, handle.layout
    records = handle.records()
    tasks: set[int] = set()
    keys: set[str] = set()
    others = []
    for finding in damaged:
        name = finding["array"]
        if name not in _task_arrays(teacher):  # offsets, the segments table: written once, when the teacher or table was made
            others.append(finding)
            continue
        array = teacher[name]
        touched = objects_along_rows(array, *finding["rows"]) if finding["rows"] else [o for o in objects_along_rows(array, 0, array.shape[0]) if object_key(array, o[0]) == finding["object"]]
        spans = [(a, b) for _, a, b in touched]
        keys.update(object_key(array, coords) for coords, _, _ in touched)
        for task in records:
            lo, hi = _task_span(teacher, layout, task, name)
            if any(lo < b and a < hi for a, b in spans):
                tasks.add(task)
    return tasks, keys, others


def _remade_by(handle: Teacher | ExtendedTeacher) -> str:
    """The command that writes a teacher's forgotten tasks again: extract, task by task, for a teacher of rows; a teacher
    of logits only is written whole, by fit-teachers (its provenance has `fit`) or by import-h5."""
    if handle.provenance.fit:
        return "fit-teachers"
    return "import-h5" if handle.imported and not (handle.has_features or handle.has_frames) else "extract"


def verify_teacher(handle: Teacher | ExtendedTeacher) -> dict:
    if isinstance(handle, ExtendedTeacher):  # each extent has its own objects and records: check each, report in cache tasks
        return _merge([(e.first_task, verify_teacher(e.teacher)) for e in handle.extents], handle.layout.tasks)
    teacher, layout = handle._group, handle.layout
    records = handle.records()
    expected: dict[str, tuple[str, int]] = {}  # object key -> (checksum, task that recorded it)
    unchecked: list[int] = []
    damaged: list[dict] = []
    rows_checked = 0
    for task, record in sorted(records.items()):
        if record.checksums is None:
            unchecked.append(task)
            continue
        for key, checksum in record.checksums.items():
            expected.setdefault(key, (checksum, task))
        for part in record.row_checksums:
            lo, hi = part["rows"]
            rows_checked += hi - lo
            try:
                found = rows_digest(teacher[part["array"]][lo:hi])
            except Exception as err:  # noqa: BLE001 - a corrupt shard fails to decode: that is the finding
                damaged.append(_finding(teacher, part["array"], None, task, f"unreadable ({type(err).__name__})", [lo, hi]))
                continue
            if found != part["sha256"]:
                damaged.append(_finding(teacher, part["array"], None, task, "row values changed", [lo, hi]))
    for key, (checksum, task) in sorted(expected.items()):
        found = digest(read_object(teacher, key))
        if found != checksum:
            problem = "missing" if found == ABSENT else ("present but recorded as empty" if checksum == ABSENT else "bytes changed")
            damaged.append(_finding(teacher, _array_of(teacher, key), key, task, problem))
    for task in unchecked:  # no checksums to compare: at least every value must decode
        damaged.extend(_decode_task(teacher, layout, task))
    incomplete = [t for t in range(layout.tasks) if t not in records and _has_objects(teacher, layout, t)]
    return {
        "key": handle.key,
        "tasks": layout.tasks,
        "tasks_done": len(records),
        "tasks_incomplete": incomplete,
        "tasks_pending": layout.tasks - len(records) - len(incomplete),
        "tasks_without_checksums": unchecked,
        "objects_checked": len(expected),
        "rows_checked_by_value": rows_checked,
        "damaged": damaged,
    }


def _merge(reports: list[tuple[int, dict]], tasks: int) -> dict:
    """One report of a teacher with extents, from each extent's (first cache task, report)."""
    merged = {"key": reports[0][1]["key"], "tasks": tasks, "damaged": []}
    for name in ("tasks_done", "objects_checked", "rows_checked_by_value"):
        merged[name] = sum(r[name] for _, r in reports)
    for name in ("tasks_incomplete", "tasks_without_checksums"):
        merged[name] = [first + t for first, r in reports for t in r[name]]
    merged["tasks_pending"] = tasks - merged["tasks_done"] - len(merged["tasks_incomplete"])
    merged["damaged"] = [{**d, "task": first + d["task"]} for first, r in reports for d in r["damaged"]]
    return merged


def _finding(teacher: zarr.Group, array: str, key: str | None, task: int, problem: str, rows: list[int] | None = None) -> dict:
    where = key or f"{teacher.path}/{array}"
    return {"teacher": teacher.basename, "array": array, "object": where, "task": task, "rows": rows, "problem": problem}


def _array_of(teacher: zarr.Group, key: str) -> str:
    """The array name an object key belongs to: "features", "frames", "logits/verb", or "segments/id"."""
    head, _, _ = key.partition("/c/")
    prefix = teacher.path + "/"
    return head[len(prefix):] if head.startswith(prefix) else head


def _task_arrays(teacher: zarr.Group) -> list[str]:
    names = [n for n in ("features", "frames", "timestamps") if n in teacher]
    if "logits" in teacher:
        names += [f"logits/{h}" for h, _ in sorted(teacher["logits"].arrays())]
    return names


def _task_span(teacher: zarr.Group, layout: Layout, task: int, name: str) -> tuple[int, int]:
    segs = layout.task_segments(task)
    if name.startswith("logits/"):
        return segs.start, segs.stop
    offsets = teacher["offsets"]
    return int(offsets[segs.start]), int(offsets[segs.stop])


def _decode_task(teacher: zarr.Group, layout: Layout, task: int) -> list[dict]:
    findings = []
    for name in _task_arrays(teacher):
        a, b = _task_span(teacher, layout, task, name)
        try:
            teacher[name][a:b]
        except Exception as err:  # noqa: BLE001 - see verify_teacher
            findings.append(_finding(teacher, name, None, task, f"unreadable ({type(err).__name__})", [a, b]))
    return findings


def _has_objects(teacher: zarr.Group, layout: Layout, task: int) -> bool:
    """Whether objects that only this task writes are already stored (so it started writing)."""
    store = teacher.store_path.store
    for name in _task_arrays(teacher):
        array = teacher[name]
        a, b = _task_span(teacher, layout, task, name)
        for coords, start, stop in objects_along_rows(array, a, b):
            if a <= start and stop <= b and sync(store.exists(object_key(array, coords))):
                return True
    return False

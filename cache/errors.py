"""The exception kinds every stage raises; the CLI turns each into a one-line message."""


class EgodistillError(Exception):
    """Base: a problem the user can fix. `str(err)` names the thing and the fix, in one line."""


class ManifestError(EgodistillError):
    """A manifest file cannot be read: missing, unknown format, or a malformed row (file:line)."""


class MediaError(EgodistillError):
    """A video or audio stream cannot be decoded (missing, empty, truncated, unknown codec, no audio)."""


class TeacherError(EgodistillError):
    """A backbone, weights file or head file that cannot be used (unknown, does not fit, wrong class count)."""


class CacheError(EgodistillError):
    """A cache that cannot be opened, written, or that holds something else than asked for."""


class ExtractError(EgodistillError):
    """An extract option that cannot be used: an unknown modality or flow method, a count or rate out of range."""


class DeviceError(EgodistillError):
    """A --device this machine does not have."""

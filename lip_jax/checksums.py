"""Checksums of a saved directory (a checkpoint, converted weights): written once it is
complete, checked before it is read, so that changed bytes (a flipped bit, a truncated,
missing or added file) are found instead of loaded."""

import hashlib
import json

from etils import epath

FILE = "checksums.json"  # in the directory: {relative path: SHA-256} of every other file


def _files(directory: epath.Path, prefix: str = "") -> dict[str, epath.Path]:
    """{relative path: path} of every file under `directory` but the checksums."""
    files = {}
    for path in directory.iterdir():
        if path.is_dir():
            files.update(_files(path, f"{prefix}{path.name}/"))
        elif path.name not in (FILE, FILE + ".tmp"):
            files[prefix + path.name] = path
    return files


def _sha256(path: epath.Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write(directory) -> None:
    """Records the checksum of every file under `directory` in `directory/checksums.json`
    (written whole or not at all)."""
    directory = epath.Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot write the checksums of {directory}: no such "
                                "directory")
    sums = {name: _sha256(path) for name, path in sorted(_files(directory).items())}
    partial = directory / (FILE + ".tmp")
    partial.write_text(json.dumps(sums, indent=0))
    partial.replace(directory / FILE)


def written(directory) -> bool:
    return (epath.Path(directory) / FILE).exists()


def mismatch(directory) -> str | None:
    """What differs between the files under `directory` and its checksums.json (None if
    nothing), e.g. "default/d/3f2a has other bytes" or "checksums.json is missing"."""
    directory = epath.Path(directory)
    if not directory.is_dir():
        return f"{directory} is not a directory"
    if not written(directory):
        return f"{FILE} is missing"
    try:
        sums = json.loads((directory / FILE).read_text())
        assert isinstance(sums, dict)
    except (ValueError, AssertionError, UnicodeDecodeError):
        return f"{FILE} is damaged"
    files = _files(directory)
    for name in sorted(sums.keys() | files.keys()):
        if name not in files:
            return f"{name} is missing"
        if name not in sums:
            return f"{name} was not there when it was saved"
        if _sha256(files[name]) != sums[name]:
            return f"{name} has other bytes than when it was saved"
    return None

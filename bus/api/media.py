"""Media uploads: type checked by content, stored content-addressed without their embedded
metadata (bus.api.media_metadata), served back by URL (the request's `media_url`).

A file is named by the SHA-256 of its bytes, so the same photo posted twice is stored once and
a stored file never changes under its URL. It goes only when taken down (bus.takedown) from
the last request showing it.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bus.api.media_metadata import Unreadable, without_metadata
from schemas.model import Media

MAX_MEDIA_BYTES = 5 * 1024 * 1024
MAX_MEDIA_FILES = 5

_NAME = re.compile(r"([0-9a-f]{64})\.(jpg|png|gif|webp|pdf)")
CONTENT_TYPES = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "webp": "image/webp",
    "pdf": "application/pdf",
}
_KINDS = {"jpg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WebP", "pdf": "PDF"}


class UnreadableUploads(ValueError):
    """Uploads whose metadata could not be removed: `problems` describe each by its number."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def sniff(data: bytes) -> str | None:
    """The file extension the content really is (by magic bytes), or None if not accepted."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith(b"%PDF-"):
        return "pdf"
    return None


def check_upload(data: bytes, index: int) -> str | None:
    """An error description for an unacceptable upload, or None when it is fine."""
    if not data:
        return f"media {index}: the file is empty"
    if len(data) > MAX_MEDIA_BYTES:
        return f"media {index}: larger than {MAX_MEDIA_BYTES // (1024 * 1024)} MB"
    if sniff(data) is None:
        return f"media {index}: not a JPEG, PNG, GIF, WebP or PDF file"
    return None


@dataclass(frozen=True)
class MediaStore:
    """Files under `directory`, served at `{base_url}/media/{sha256}.{ext}`."""

    directory: Path
    base_url: str

    def save(self, data: bytes) -> Media:
        """Store checked content (see check_upload) durably and return its canonical Media;
        media_metadata.Unreadable when its metadata cannot be removed (nothing stored)."""
        ext = _checked_type(data)
        return self._write(without_metadata(data, ext), ext)

    def save_all(self, uploads: list[bytes]) -> tuple[Media, ...]:
        """Store a submission's checked uploads, or none of them: UnreadableUploads names each
        whose metadata cannot be removed (a request shows all its photos or fails)."""
        cleaned: list[tuple[bytes, str]] = []
        problems: list[str] = []
        for index, data in enumerate(uploads, start=1):
            ext = _checked_type(data)
            try:
                # Served publicly: no GPS, device or owner's name.
                cleaned.append((without_metadata(data, ext), ext))
            except Unreadable:
                problems.append(
                    f"media {index}: the {_KINDS[ext]} could not be read to remove its metadata;"
                    " send it again as a plain JPEG or PNG"
                )
        if problems:
            raise UnreadableUploads(problems)
        return tuple(self._write(data, ext) for data, ext in cleaned)

    def _write(self, data: bytes, ext: str) -> Media:
        digest = hashlib.sha256(data).hexdigest()
        name = f"{digest}.{ext}"
        target = self._path(digest, name)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            # Write aside, fsync, then rename: a reader never sees half a file.
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        url = f"{self.base_url.rstrip('/')}/media/{name}"
        return Media(url=url, content_type=CONTENT_TYPES[ext], sha256=digest)

    def find(self, name: str) -> tuple[Path, str] | None:
        """The stored file and its content type for a URL name, or None."""
        match = _NAME.fullmatch(name)  # not match with `$`: it allows a trailing newline
        if match is None:
            return None
        path = self._path(match.group(1), name)
        return (path, CONTENT_TYPES[match.group(2)]) if path.is_file() else None

    def remove(self, sha256: str) -> bool:
        """Delete the stored file of that content (whatever its extension); False when there is
        none here. Its URL then answers 404. The caller checks first that no other request
        shows the same content (it is stored once for all of them)."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError("not a SHA-256 hex digest")
        removed = False
        for ext in CONTENT_TYPES:
            name = f"{sha256}.{ext}"
            try:
                self._path(sha256, name).unlink()
            except FileNotFoundError:
                continue
            removed = True
        return removed

    def _path(self, digest: str, name: str) -> Path:
        return self.directory / digest[:2] / name


def _checked_type(data: bytes) -> str:
    ext = sniff(data)
    if ext is None:
        raise ValueError("unchecked upload: not an accepted media type")
    return ext

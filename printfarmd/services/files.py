"""G-code files on disk: the one containment check every path-taking entry point uses.

``resolve_gcode`` accepts only a relative name that stays inside the gcodes folder
after Unicode normalisation and after every symlink is resolved. Blocking (touches
the filesystem): call it through ``trio.to_thread.run_sync`` from async code.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import shutil
import threading
import unicodedata
from collections.abc import AsyncIterable, Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec
import trio

from printfarmd.core import gcode_meta
from printfarmd.errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    StorageFull,
    ValidationFailed,
)

GCODE_SUFFIXES = frozenset({".gcode", ".g", ".gco", ".nc"})
MAX_NAME_BYTES = 1024
MAX_SEGMENT_BYTES = 255
_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


#: Bidirectional overrides and isolates: they make a name display as something else.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _is_control(c: str) -> bool:
    # C0, DEL and C1 (0x9B is a one-byte CSI to a terminal), lone surrogates (cannot be
    # encoded for the filesystem), line/paragraph separators (split log and UI lines).
    return unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or c in _BIDI_CONTROLS


def check_relative_name(name: str) -> PurePosixPath:
    """Validate a user-supplied relative file name; return it as a POSIX path.

    Raises ``BadRequest`` naming the problem: empty, too long, control characters (C0,
    DEL, C1, lone surrogates, line separators, bidi overrides), backslashes, absolute,
    ``.``/``..`` segments (also after NFKC normalisation, which turns fullwidth dots and
    slashes into real ones), or a segment ending in a dot or a space.
    """
    if not isinstance(name, str) or not name:
        raise BadRequest("filename: must be a non-empty string")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise BadRequest(f"filename: longer than {MAX_NAME_BYTES} bytes")
    if any(_is_control(c) for c in name):
        raise BadRequest("filename: contains control characters")
    for form in {name, unicodedata.normalize("NFKC", name)}:
        if "\\" in form:
            raise BadRequest("filename: backslashes are not allowed")
        if form.startswith("/"):
            raise BadRequest("filename: must be relative to the gcodes folder")
        for part in form.split("/"):
            if part in ("", ".", ".."):
                raise BadRequest("filename: must be a plain relative path inside the gcodes folder")
            if part.endswith((".", " ")):
                raise BadRequest("filename: a path segment may not end with a dot or a space")
            if len(part.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
                raise BadRequest(
                    f"filename: a path segment is longer than {MAX_SEGMENT_BYTES} bytes"
                )
    return PurePosixPath(name)


def check_no_percent_escapes(name: str) -> None:
    """Refuse ``%xx`` in a name that was already decoded: a double-encoding attempt (S1)
    or a client bug; either way the name would not mean what it looks like."""
    if _PERCENT_ESCAPE.search(name):
        raise BadRequest("filename: percent-encoded sequences are not allowed")


def _contained(root: Path, rel: PurePosixPath, where: str) -> Path:
    """THE containment check: ``root / rel`` with every symlink resolved must lie strictly
    inside ``root`` (itself resolved); else ``BadRequest`` saying it must stay inside ``where``.
    Blocking."""
    real_root = root.resolve()
    try:
        candidate = (real_root / rel).resolve(strict=False)
    except (OSError, RuntimeError, ValueError):
        raise BadRequest("filename: cannot be resolved") from None
    if not candidate.is_relative_to(real_root) or candidate == real_root:
        raise BadRequest(f"filename: must stay inside {where}")
    return candidate


def resolve_gcode(root: Path, name: str) -> Path:
    """The real path of G-code file ``name`` under ``root``. Blocking.

    Raises ``BadRequest`` for an illegal name or one that resolves outside ``root``
    (symlinks included), ``ValidationFailed`` if it is not an existing regular G-code file.
    """
    rel = check_relative_name(name)
    if rel.suffix.lower() not in GCODE_SUFFIXES:
        allowed = ", ".join(sorted(GCODE_SUFFIXES))
        raise ValidationFailed(
            f"filename: not a G-code file (allowed: {allowed})", field="filename"
        )
    check_no_percent_escapes(name)
    candidate = _contained(root, rel, "the gcodes folder")
    try:
        st = candidate.stat()
    except (OSError, ValueError):
        raise ValidationFailed(
            f"filename: {name} does not exist in the gcodes folder", field="filename"
        ) from None
    if not os.path.isfile(candidate) or st.st_size < 0:
        raise ValidationFailed(f"filename: {name} is not a regular file", field="filename")
    return candidate


def read_meta(path: Path) -> gcode_meta.GcodeMeta:
    """Slicer metadata from the first and last MiB of ``path``. Blocking."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(gcode_meta.HEAD_TAIL_BYTES)
        tail = b""
        if size > gcode_meta.HEAD_TAIL_BYTES:
            fh.seek(max(size - gcode_meta.HEAD_TAIL_BYTES, gcode_meta.HEAD_TAIL_BYTES))
            tail = fh.read()
    return gcode_meta.parse(head, tail)


#: Parsed metadata kept per file version (real path, size, mtime, inode), newest last.
META_CACHE_SIZE = 512
_meta_cache: collections.OrderedDict[tuple[str, int, int, int], gcode_meta.GcodeMeta] = (
    collections.OrderedDict()
)
_meta_lock = threading.Lock()


def meta_of(path: Path) -> gcode_meta.GcodeMeta:
    """``read_meta(path)``, read again only when the file changed (bounded cache;
    thread-safe). Blocking."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _meta_lock:
        found = _meta_cache.get(key)
        if found is not None:
            _meta_cache.move_to_end(key)
            return found
    meta = read_meta(path)
    with _meta_lock:
        _meta_cache[key] = meta
        while len(_meta_cache) > META_CACHE_SIZE:
            _meta_cache.popitem(last=False)
    return meta


def gcode_file(root: Path, name: str) -> tuple[Path, gcode_meta.GcodeMeta]:
    """``resolve_gcode`` and ``meta_of`` in one call (one worker-thread hop for a job
    submission). Blocking; raises as ``resolve_gcode``."""
    path = resolve_gcode(root, name)
    return path, meta_of(path)


# ---------------------------------------------------------------- generic containment


def resolve_in(root: Path, name: str, *, must_exist: bool = True) -> Path:
    """The real path of ``name`` (any file type) under ``root``. Blocking.

    The same rules as ``resolve_gcode`` (``check_relative_name``, then containment after
    every symlink is resolved), without the G-code suffix rule. Raises ``BadRequest``
    for an illegal or escaping name, ``NotFound`` if ``must_exist`` and it is missing.
    """
    rel = check_relative_name(name)
    check_no_percent_escapes(name)
    candidate = _contained(root, rel, "its folder")
    if must_exist and not os.path.exists(candidate):
        raise NotFound(f"file {name} not found")
    return candidate


class StoredFile(msgspec.Struct, frozen=True):
    """A file in a storage root: ``path`` relative to the root, POSIX separators."""

    path: str
    size: int
    modified: float
    sha256: str = ""


def list_gcodes(root: Path) -> list[StoredFile]:
    """Every G-code file under ``root`` (recursively), hidden files and folders skipped,
    symlinks that leave ``root`` skipped. Sorted by path. Blocking."""
    out: list[StoredFile] = []
    real_root = root.resolve()
    if not real_root.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(real_root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in filenames:
            if fname.startswith(".") or PurePosixPath(fname).suffix.lower() not in GCODE_SUFFIXES:
                continue
            full = Path(dirpath) / fname
            try:
                real = full.resolve()
                st = real.stat()
            except (OSError, RuntimeError):
                continue
            if not real.is_relative_to(real_root) or not os.path.isfile(real):
                continue
            out.append(StoredFile(full.relative_to(real_root).as_posix(), st.st_size, st.st_mtime))
    out.sort(key=lambda f: f.path)
    return out


# ---------------------------------------------------------------- streaming upload

#: Form fields an upload may carry; any other field is ignored, never interpreted.
UPLOAD_FIELDS = frozenset({"file", "path", "root", "checksum", "print"})
MAX_FIELD_BYTES = 4096
#: Header bytes one part may carry and parts one body may have: an endless part header
#: or thousands of empty parts would otherwise cost memory and time up to the body cap.
MAX_PART_HEADER_BYTES = 8192
MAX_PARTS = 64
#: Seconds an upload may go without a byte arriving before it is refused (408) and its
#: temp file removed, so a stalled client (slowloris) holds nothing for long. Quart's
#: ``BODY_TIMEOUT`` only covers bodies read whole, not a streamed one.
UPLOAD_IDLE_TIMEOUT = 30.0
#: Slowest average rate (bytes/s) allowed after the first ``UPLOAD_IDLE_TIMEOUT``
#: seconds: a client trickling a byte at a time cannot stretch an upload forever.
UPLOAD_MIN_RATE = 8 * 1024
#: Free disk space is checked again after every this many bytes written.
FREE_CHECK_EVERY = 16 * 1024 * 1024


class UploadTimeout(BadRequest):
    """The client stopped sending (or sent too slowly): nothing was stored."""

    status = 408
    code = "request_timeout"


class UploadResult(msgspec.Struct, frozen=True):
    stored: StoredFile
    #: The declared text fields that came with the file (``path``, ``checksum``, ...).
    fields: dict[str, str]


def _boundary(content_type: str) -> bytes:
    from python_multipart.multipart import parse_options_header  # on first upload (issue 17)

    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise BadRequest("upload: expected a multipart/form-data body with a boundary")
    return params[b"boundary"]


def _param_names(header: bytes) -> list[str]:
    """The parameter names of a ``Content-Disposition`` value, in order, duplicates kept
    (quoted ``;`` and ``=`` skipped): the parser keeps only the last of a repeated one."""
    names: list[str] = []
    quoted = escaped = False
    key: list[str] = []
    in_key = False
    for ch in header.decode("latin-1"):
        if quoted:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == ";":
            in_key, key = True, []
        elif ch == "=" and in_key:
            names.append("".join(key).strip().lower())
            in_key = False
        elif in_key:
            key.append(ch)
    return names


class _FormSink:
    """Collects multipart events; the file part's bytes are handed back per chunk.

    Refuses (``BadRequest``) what could be read two ways: a second ``file`` part, a
    repeated declared field, a repeated ``Content-Disposition`` parameter, a declared
    text field sent as a file; and oversized part headers or too many parts.
    """

    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._header_bytes = 0
        self.parts = 0
        self.name = ""
        self.filename: str | None = None
        #: The file part's own filename (``filename`` is the current part's).
        self.file_name: str | None = None
        self.fields: dict[str, str] = {}
        self._named: set[str] = set()
        self.file_seen = False
        self.in_file = False
        self.file_done = False
        self.file_chunks: list[bytes] = []
        self.complete = False
        self._text = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._hfield,
            "on_header_value": self._hvalue,
            "on_header_end": self._hend,
            "on_headers_finished": self._hdone,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_end": self._all_done,
        }

    def _begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise BadRequest(f"upload: more than {MAX_PARTS} form parts")
        self.headers = {}
        self._field = self._value = b""
        self._header_bytes = 0
        self.name, self.filename = "", None
        self._text = bytearray()

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise BadRequest("upload: a form part's headers are too long")

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        self._field += data[start:end]

    def _hvalue(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        self._value += data[start:end]

    def _hend(self) -> None:
        self.headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _hdone(self) -> None:
        disposition = self.headers.get(b"content-disposition", b"")
        keys = _param_names(disposition)
        if len(keys) != len(set(keys)):
            raise BadRequest("upload: a form part repeats a Content-Disposition parameter")
        from python_multipart.multipart import parse_options_header

        _disp, params = parse_options_header(disposition)
        self.name = params.get(b"name", b"").decode("utf-8", "replace")
        raw = params.get(b"filename")
        self.filename = None if raw is None else raw.decode("utf-8", "replace")
        if self.name not in UPLOAD_FIELDS:
            return
        if self.name in self._named:
            raise BadRequest(f"upload: more than one {self.name!r} part")
        self._named.add(self.name)
        if self.name == "file":
            if not self.filename:
                raise BadRequest("upload: the file part has no filename")
            self.file_seen = self.in_file = True
            self.file_name = self.filename
        elif self.filename is not None:
            raise BadRequest(f"upload: field {self.name!r} must be a plain form field")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self.file_chunks.append(data[start:end])
        elif self.name in UPLOAD_FIELDS:
            self._text += data[start:end]
            if len(self._text) > MAX_FIELD_BYTES:
                raise BadRequest(f"upload: field {self.name} is too long")

    def _end(self) -> None:
        if self.in_file:
            self.in_file = False
            self.file_done = True
        elif self.name in UPLOAD_FIELDS:
            self.fields[self.name] = self._text.decode("utf-8", "replace")

    def _all_done(self) -> None:
        self.complete = True


async def receive_upload(
    root: Path,
    content_type: str,
    chunks: AsyncIterable[bytes],
    *,
    max_bytes: int,
    min_free_bytes: int,
    subdir_field: str = "path",
    declared_length: int | None = None,
    check_fields: Callable[[Mapping[str, str]], None] | None = None,
) -> UploadResult:
    """Stream a multipart upload into ``root``; return what was stored.

    Only the declared fields (``UPLOAD_FIELDS``) are read, each at most once. The file
    part goes to a server-chosen hidden temp file in ``root`` while the SHA-256 and size
    are computed. Refusals, each leaving nothing on disk: more than ``max_bytes`` ->
    ``PayloadTooLarge`` (413) as soon as it is seen; a disk that would keep less than
    ``min_free_bytes`` free -> ``StorageFull`` (507), before any byte is read when
    ``declared_length`` (the Content-Length) says so, else while writing; no byte for
    ``UPLOAD_IDLE_TIMEOUT`` s or slower than ``UPLOAD_MIN_RATE`` on average ->
    ``UploadTimeout`` (408); a body that is not complete multipart (its closing boundary
    included) -> 400; a ``checksum`` field that differs -> ``ValidationFailed`` (422);
    ``check_fields`` (called with the fields before anything is placed) may raise too.
    On success the temp file is fsynced, renamed to ``<path>/<filename>`` (both checked by
    ``resolve_in``) and the folder fsynced. A checkpoint.
    """
    # The multipart parser is imported on the first upload (issue 17: start needs none).
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser

    sink = _FormSink()
    parser = MultipartParser(_boundary(content_type), sink.callbacks())  # type: ignore[arg-type]
    real_root = await trio.to_thread.run_sync(_ready_root, root)
    if declared_length is not None:
        usage = await trio.to_thread.run_sync(shutil.disk_usage, real_root)
        if usage.free - declared_length < min_free_bytes:
            raise StorageFull("upload: not enough free disk space")
    tmp = real_root / f".upload-{secrets.token_hex(8)}.part"
    digest = hashlib.sha256()
    size = received = 0
    next_free_check = FREE_CHECK_EVERY
    started = trio.current_time()
    stream = aiter(chunks)
    fh = await trio.open_file(tmp, "xb")
    try:
        try:
            while not sink.complete:
                deadline = min(
                    trio.current_time() + UPLOAD_IDLE_TIMEOUT,
                    started + UPLOAD_IDLE_TIMEOUT + received / UPLOAD_MIN_RATE,
                )
                with trio.move_on_at(deadline):
                    try:
                        chunk = await anext(stream)
                    except StopAsyncIteration:
                        break
                    received += len(chunk)
                    parser.write(chunk)
                    for piece in sink.file_chunks:
                        size += len(piece)
                        if size > max_bytes:
                            raise PayloadTooLarge(
                                f"upload: the file is larger than {max_bytes} bytes"
                            )
                        digest.update(piece)
                        await fh.write(piece)
                    sink.file_chunks.clear()
                    if size >= next_free_check:
                        next_free_check = size + FREE_CHECK_EVERY
                        await _check_free(real_root, min_free_bytes)
                    continue
                raise UploadTimeout("upload: the client stopped sending the body")
            parser.finalize()
        except MultipartParseError:
            raise BadRequest("upload: malformed multipart body") from None
        if not sink.complete:
            raise BadRequest("upload: the body ended before the closing multipart boundary")
        if not sink.file_done or sink.file_name is None:
            raise BadRequest("upload: no complete file part named 'file'")
        await _check_free(real_root, min_free_bytes)
        sha = digest.hexdigest()
        want = sink.fields.get("checksum", "").strip().lower()
        # A non-ASCII str would make compare_digest raise TypeError: it cannot match anyway.
        if want and not (want.isascii() and hmac.compare_digest(want, sha)):
            raise ValidationFailed("upload: checksum mismatch", field="checksum")
        if check_fields is not None:
            check_fields(sink.fields)
        subdir = sink.fields.get(subdir_field, "").rstrip("/")
        rel = f"{subdir}/{sink.file_name}" if subdir else sink.file_name
        check_relative_name(rel)
        if PurePosixPath(rel).suffix.lower() not in GCODE_SUFFIXES:
            allowed = ", ".join(sorted(GCODE_SUFFIXES))
            raise BadRequest(f"upload: not a G-code file (allowed: {allowed})")
        await fh.flush()
        await trio.to_thread.run_sync(os.fsync, fh.fileno())
        await fh.aclose()
        dest = await trio.to_thread.run_sync(_place, real_root, rel, tmp)
        stored = StoredFile(dest.relative_to(real_root).as_posix(), size, dest.stat().st_mtime, sha)
        return UploadResult(stored, dict(sink.fields))
    finally:
        # Shielded: a cancelled upload (client gone, shutdown) must still remove its file.
        with trio.CancelScope(shield=True):
            await fh.aclose()
            with contextlib.suppress(FileNotFoundError):
                await trio.to_thread.run_sync(tmp.unlink)


async def _check_free(real_root: Path, min_free_bytes: int) -> None:
    usage = await trio.to_thread.run_sync(shutil.disk_usage, real_root)
    if usage.free < min_free_bytes:
        raise StorageFull("upload: not enough free disk space")


def _ready_root(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def _place(real_root: Path, rel: str, tmp: Path) -> Path:
    """Move the finished temp file to ``rel`` (containment-checked) and fsync its folder."""
    dest = resolve_in(real_root, rel, must_exist=False)
    if dest.is_dir():
        raise BadRequest("upload: a folder of that name exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # The folder we just made may itself be a symlink target: check again after mkdir.
    dest = resolve_in(real_root, rel, must_exist=False)
    os.replace(tmp, dest)
    fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return dest

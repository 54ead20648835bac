"""The `download` stage's library: bring source images into data/raw, verified.

Sources (data.source):
  celeba     the official aligned-and-cropped CelebA (img_align_celeba.zip, 202,599 JPEGs) plus
             its attribute, partition and aligned-landmark lists, from the Google Drive files
             torchvision's CelebA dataset uses, each checked against torchvision's md5 sum.
  url        any zip/tar(.gz/.bz2/.xz) mirror; data.sha256 verifies it when given (when not, the
             computed sha256 is logged and recorded in SOURCE.json).
  folder     a local folder of images (read in place, listed in data/raw/files.jsonl) or a local
             archive (extracted).
  synthetic  drawn offline (facegan.data.synthetic).

Downloads land in data.download_dir (outside the DVC output data/raw, so a re-run of the stage
never fetches again; a data.url download under a folder named by the URL's hash, so a changed
data.url never reuses another URL's file): `<name>.part` grows with HTTP Range requests across retries and runs, is
hashed when complete and only then renamed to `<name>`; a `<name>.verified.json` stamp (size,
mtime, digest) saves re-hashing. Archives are extracted into a temporary directory that replaces
the target only when complete. Every failure is one UserError line naming what happened and how
to supply the files by hand (data.source=folder). The only credential, FACEGAN_HTTP_TOKEN (a
bearer token for data.url's host), comes from the environment; a redirect to another host or port
does not carry it (requests drops it).

Where a mirror redirects, the bytes come from another address than data.url: the stamp keeps that
address and SOURCE.json names it as `fetched_from`, beside `url`. No address is written to disk,
or named in a message, with its `user:password@`, its query or its fragment (`without_secrets`):
a pre-signed redirect target carries its signature and tokens in the query, and so may a
data.url; SOURCE.json's `url` is data.url without them too.

The list of a source's images (`files.jsonl`, one `{"name", "bytes"}` object a line) holds any file
name byte-exact: names are JSON strings, and a name that is not UTF-8 is kept with Python's
surrogate escapes (os.fsdecode), which JSON writes as `\\udcXX` and reads back unchanged, so a tab,
a newline or a Latin-1 byte in a name is neither split nor dropped. Listing follows symlinked
folders; a folder reached a second time (a symlink loop, or two links to one folder) is listed
once, and how many were skipped is logged and recorded in SOURCE.json. A broken symlink (to a
missing file or folder, or a link loop) is skipped, not fatal: one warning line gives their count
and the first few, and SOURCE.json names them all (`broken_links`). An image or folder this
user may not read stops the download with one line naming it and the chmod that fixes it.
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import logging
import os
import shlex
import shutil
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlparse, urlsplit, urlunsplit

from tqdm import tqdm

from facegan import handoff, settings
from facegan.errors import UserError
from facegan.io import atomic_dir, disk_full_error, is_disk_full, is_file_too_large, write_json, write_text

log = logging.getLogger(__name__)

GDRIVE_DOWNLOAD = "https://drive.usercontent.google.com/download"
# (Google Drive file id, md5, file name): the ids and sums of torchvision.datasets.CelebA.
CELEBA_FILES = (
    ("0B7EVK8r0v71pZjFTYXZWM3FlRnM", "00d2c5bc6d35e252742224ab0c1e8fcb", "img_align_celeba.zip"),
    ("0B7EVK8r0v71pblRyaVFSWGxPY0U", "75e246fa4810816ffd6ee81facbd244c", "list_attr_celeba.txt"),
    ("0B7EVK8r0v71pY0NSMzRuSXJEVkk", "d32c9cbf5e040fd4025c592c306e6668", "list_eval_partition.txt"),
    ("0B7EVK8r0v71pd0FJY3Blby1HUTQ", "cc24ecafdb5b50baae59b03474781f8c", "list_landmarks_align_celeba.txt"),
)
CELEBA_IMAGES = 202_599
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
TOKEN_ENV = "FACEGAN_HTTP_TOKEN"
CHUNK = 1 << 20
NET_CHUNK = 1 << 16  # a broken connection loses at most this much of the .part
SOURCE_FILE = "SOURCE.json"
BY_HAND = "download the files by hand and set data.source=folder data.folder=<path> (see docs/data.md)"


class HtmlPageError(UserError):
    """The server sent a web page where a file was expected (quota notice, login, error page)."""

    def __init__(self, message: str, page: str, url: str):
        super().__init__(message)
        self.page, self.url = page, url


def _disk_full(err: OSError, path: Path) -> UserError | None:
    """The one line for a write that the disk, its quota or the file-size limit cut (facegan.io), else None."""
    if is_disk_full(err) or is_file_too_large(err):
        return disk_full_error(path, is_dir=path.is_dir(), err=err)
    return None


def without_secrets(url: str) -> str:
    """`url` as it may be written to disk or shown: no `user:password@`, no query, no fragment.

    The whole query goes, not only `token=`: a mirror's redirect target (a pre-signed S3 or CDN
    address) carries its signature and credentials under many names."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _stamp_matches(path: Path, algorithm: str, expected: str | None) -> str | None:
    """The recorded digest if `path` is unchanged since it was verified (and matches `expected`)."""
    stamp = _stamp_path(path)
    if not (path.exists() and stamp.exists()):
        return None
    try:
        record = json.loads(stamp.read_text())
    except json.JSONDecodeError:
        return None
    info = path.stat()
    same_file = record.get("size") == info.st_size and record.get("mtime_ns") == info.st_mtime_ns
    if same_file and record.get("algorithm") == algorithm and (expected is None or record.get("digest") == expected):
        return record["digest"]
    return None


def _write_stamp(path: Path, algorithm: str, digest: str, fetched_from: str = "") -> None:
    """`fetched_from` (already without secrets): where the bytes came from, kept for the runs that reuse them."""
    info = path.stat()
    write_json(
        _stamp_path(path),
        {
            "size": info.st_size,
            "mtime_ns": info.st_mtime_ns,
            "algorithm": algorithm,
            "digest": digest,
            "fetched_from": fetched_from,
        },
    )


def fetched_from(path: str | Path) -> str:
    """The address (without secrets) the verified file at `path` was downloaded from, after any
    redirects; "" where that is not known (a file put there by hand, or stamped by an older version)."""
    try:
        return str(json.loads(_stamp_path(Path(path)).read_text()).get("fetched_from", ""))
    except (OSError, json.JSONDecodeError, AttributeError):
        return ""


def _looks_like_html(head: bytes, content_type: str) -> bool:
    start = head.lstrip()[:64].lower()
    return start.startswith((b"<!doctype html", b"<html")) or ("text/html" in content_type and start.startswith(b"<"))


def _progress(total: int | None, initial: int, name: str):
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=name, leave=False, disable=None)


@dataclass(frozen=True)
class Patience:
    """How long a download keeps trying: `retries` more attempts after the first, `backoff_s` doubling
    between them, `timeout_s` of silence from the server per read."""

    retries: int = 3
    backoff_s: float = 2.0
    timeout_s: float = 60.0


def fetch(
    url: str,
    dest: str | Path,
    *,
    digest: str | None = None,
    algorithm: str = "sha256",
    headers: dict | None = None,
    params: dict | None = None,
    patience: Patience = Patience(),
) -> str:
    """Download `url` to `dest` (resumable, verified); return the file's digest.

    Never downloads again when `dest` is there and verified. A partial `dest.part` is resumed
    with a Range request (restarted when the server ignores ranges). Raises UserError (or its
    HtmlPageError) with a one-line reason: unreachable host, HTTP error, HTML page, a download that
    keeps breaking off, or a checksum mismatch (then the bad file is deleted).
    """
    dest = Path(dest)
    digest = digest.lower() if digest else None
    kept = _verified_copy(dest, algorithm, digest)
    if kept:
        return kept
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    retries, backoff_s = patience.retries, patience.backoff_s
    request = _Request(url, part, dest.name, headers or {}, params, patience.timeout_s)
    problem = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        problem = request.attempt(may_retry=attempt < retries)
        if problem is None:
            break
    else:
        request.give_up(retries, problem)
    actual = file_digest(part, algorithm)
    if digest and actual != digest:
        size = part.stat().st_size
        part.unlink()
        raise UserError(
            f"{dest.name} from {request.host} has the wrong {algorithm} ({actual[:12]}..., expected {digest[:12]}...; "
            f"{size:,} bytes, truncated or a different file): deleted it; re-run, or {BY_HAND}"
        )
    os.replace(part, dest)
    _write_stamp(dest, algorithm, actual, request.fetched_from)
    return actual


def _verified_copy(dest: Path, algorithm: str, digest: str | None) -> str | None:
    """The digest of a `dest` already there and right (stamped, or hashed now); a wrong one is deleted."""
    recorded = _stamp_matches(dest, algorithm, digest)
    if recorded:
        return recorded
    if not dest.exists():
        return None
    actual = file_digest(dest, algorithm)
    if digest is None or actual == digest:
        _write_stamp(dest, algorithm, actual)
        return actual
    log.warning("%s is there but its %s is %s, not %s: downloading it again", dest, algorithm, actual, digest)
    dest.unlink()
    return None


@dataclass
class _Request:
    """One file's download into its `.part`, attempt by attempt, each resuming where the last stopped."""

    url: str
    part: Path
    name: str  # the file's name, as the messages say it
    headers: dict
    params: dict | None
    timeout_s: float
    fetched_from: str = ""  # the last response's address after redirects, without secrets

    @property
    def host(self) -> str:
        """The host (and port) the messages name: never the URL's `user:password@`."""
        return urlparse(self.url).netloc.rpartition("@")[2] or self.url

    def kept_bytes(self) -> int:
        return self.part.stat().st_size if self.part.exists() else 0

    def attempt(self, may_retry: bool) -> str | None:
        """One request, appended to the part: None once the part holds the whole file, else why to try again."""
        import requests  # here, so folder/synthetic sources (and the benchmark) do not need it

        try:
            return self._get(requests, may_retry)
        except UserError:
            raise
        except OSError as err:
            if full := _disk_full(err, self.part):
                raise full from err
            if not isinstance(err, requests.RequestException):
                raise
            got = self.kept_bytes()
            unreachable = isinstance(err, requests.ConnectionError) and got == 0
            return "unreachable" if unreachable else f"{type(err).__name__} after {got:,} bytes"

    def _get(self, requests, may_retry: bool) -> str | None:
        offset = self.kept_bytes()
        headers = {**self.headers, **({"Range": f"bytes={offset}-"} if offset else {})}
        with requests.get(
            self.url, params=self.params, headers=headers, stream=True, timeout=(15, self.timeout_s)
        ) as response:
            self._note_origin(response)
            if response.status_code == 416 and offset:
                return None  # the part already holds the whole file
            if response.status_code >= 400:
                if response.status_code in (429, 500, 502, 503, 504) and may_retry:
                    return f"HTTP {response.status_code}"
                raise UserError(
                    f"{self.host} answered HTTP {response.status_code} {response.reason} for {self.name}: "
                    f"check the address, or {BY_HAND}"
                )
            resumed = (
                offset
                and response.status_code == 206
                and response.headers.get("Content-Range", "").startswith(f"bytes {offset}-")
            )
            if offset and not resumed:
                log.warning("%s ignored the resume request for %s: starting it again", self.host, self.name)
                offset = 0
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else None
            chunks = response.iter_content(NET_CHUNK)
            first = next(chunks, b"")
            if offset == 0 and _looks_like_html(first, response.headers.get("Content-Type", "")):
                page = first + b"".join(c for _, c in zip(range(4), chunks))
                raise HtmlPageError(
                    f"{self.host} sent a web page instead of {self.name} (quota, login or error page): {BY_HAND}",
                    page.decode("utf-8", "replace"),
                    response.url,
                )
            with open(self.part, "ab" if offset else "wb") as handle, _progress(total, offset, self.name) as bar:
                handle.write(first)
                bar.update(len(first))
                for chunk in chunks:
                    handle.write(chunk)
                    bar.update(len(chunk))
        size = self.part.stat().st_size
        if total is not None and size < total:
            return f"connection closed after {size:,} of {total:,} bytes"
        return None

    def _note_origin(self, response) -> None:
        """Remember where this response came from: after a redirect, a host other than data.url's."""
        self.fetched_from = without_secrets(response.url)
        if response.history:
            log.info("%s: %s redirected the download to %s", self.name, self.host, self.fetched_from)

    def give_up(self, retries: int, problem: str) -> None:
        got = self.kept_bytes()
        if got == 0 and problem == "unreachable":
            raise UserError(f"cannot reach {self.host} to download {self.name} (no network?): {BY_HAND}")
        if got == 0:
            raise UserError(f"cannot download {self.name} from {self.host} ({problem}): {BY_HAND}")
        raise UserError(
            f"download of {self.name} from {self.host} broke off {retries + 1} times ({problem}); "
            f"{got:,} bytes kept in {self.part}: re-run to resume, or {BY_HAND}"
        )


class _FormParser(html.parser.HTMLParser):
    """Collect the first form's action and its hidden inputs (Drive's 'download anyway' form)."""

    def __init__(self):
        super().__init__()
        self.action, self.fields, self._in_form, self._done = None, {}, False, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and not self._done:
            self.action, self._in_form = attrs.get("action"), True
        elif tag == "input" and self._in_form and attrs.get("type") == "hidden" and attrs.get("name"):
            self.fields[attrs["name"]] = attrs.get("value") or ""

    def handle_endtag(self, tag):
        if tag == "form" and self._in_form:
            self._in_form, self._done = False, True


def _is_quota_page(page: str) -> bool:
    text = page.lower()
    return "quota exceeded" in text or "too many users have viewed or downloaded" in text


def fetch_gdrive(file_id: str, dest: str | Path, md5: str, base_url: str = GDRIVE_DOWNLOAD, **kwargs) -> str:
    """Fetch a public Google Drive file, following its 'virus scan warning' form once."""
    dest = Path(dest)
    hint = (
        f"Google Drive refuses {dest.name} for now (its download quota is exhausted; it resets within about a "
        f"day): try later, or {BY_HAND}"
    )
    try:
        return fetch(
            base_url,
            dest,
            digest=md5,
            algorithm="md5",
            params={"id": file_id, "export": "download", "confirm": "t"},
            **kwargs,
        )
    except HtmlPageError as page:
        if _is_quota_page(page.page):
            raise UserError(hint) from None
        form = _FormParser()
        form.feed(page.page)
        if not form.action:
            raise
        action = urljoin(page.url, form.action)
        try:
            return fetch(f"{action}?{urlencode(form.fields)}", dest, digest=md5, algorithm="md5", **kwargs)
        except HtmlPageError as again:
            if _is_quota_page(again.page):
                raise UserError(hint) from None
            raise


# -- archives ---------------------------------------------------------------------------------
def _safe_member(name: str) -> bool:
    parts = Path(name).parts
    return not name.startswith(("/", "\\")) and ".." not in parts and not (parts and ":" in parts[0])


def extract_archive(archive: Path, target: Path, digest: str, downloaded: bool = True) -> Path:
    """Extract a zip or tar archive into `target` atomically; skipped when already extracted.

    `downloaded`: the archive is ours (data.download_dir), so deleting it and downloading again is
    the fix; otherwise it is the user's own file (data.folder), which we never tell them to delete."""
    marker = target / ".extracted.json"
    if marker.exists():
        try:
            if json.loads(marker.read_text()).get("archive_digest") == digest:
                return target
        except json.JSONDecodeError:
            pass
    with open(archive, "rb") as handle:
        head = handle.read(2048)
    if _looks_like_html(head, ""):
        where = "the download" if downloaded else "data.folder"
        fix = f"delete {archive} and re-run" if downloaded else "replace it with the archive itself (the page's link)"
        raise UserError(f"{archive} is a web page saved in place of an archive ({where}): {fix}")
    problem = f"{archive.name} is truncated or corrupt"
    if downloaded:
        fix = f"delete {archive} and re-run to download it again, or {BY_HAND}"
    else:
        fix = f"replace {archive} with a complete copy (compare its size or checksum with the original)"
    try:
        with atomic_dir(target) as tmp:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as zf:
                    members = [m for m in zf.infolist() if not m.is_dir()]
                    unsafe = [m.filename for m in members if not _safe_member(m.filename)]
                    if unsafe:
                        raise UserError(
                            f"{archive.name} holds unsafe paths such as {unsafe[0]!r}: refusing to extract it"
                        )
                    for member in tqdm(members, desc=f"extracting {archive.name}", leave=False, disable=None):
                        zf.extract(member, tmp)  # raises BadZipFile on a CRC mismatch
            elif tarfile.is_tarfile(archive):
                with tarfile.open(archive) as tf:
                    tf.extractall(tmp, filter="data")  # "data" refuses links and paths leaving tmp
            else:
                raise UserError(f"{problem} (neither a zip nor a tar archive): {fix}")
            write_json(tmp / ".extracted.json", {"archive": archive.name, "archive_digest": digest})
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zipfile.LargeZipFile) as err:
        raise UserError(f"{problem} ({err}): {fix}") from err
    except OSError as err:
        if full := _disk_full(err, target):
            raise full from err
        if err.errno is not None:  # permission, read-only file system, I/O error: the boundary names the path
            raise
        raise UserError(f"{problem} ({err}): {fix}") from err
    return target


# -- sources ----------------------------------------------------------------------------------
FILE_LIST = "files.jsonl"


@dataclass
class Listing:
    """The images under a source's root, and what listing them skipped."""

    files: list[str]  # image paths relative to the root, sorted
    sizes: dict[str, int]  # each image's size in bytes (stat-ed once, while listing)
    folders_seen_twice: int  # symlinked folders reached before (a loop, two links to one folder): listed once
    broken_links: list[str]  # symlinks to nothing (target missing, or a link loop), relative, sorted: skipped


def list_images(root: Path) -> Listing:
    """Image files under `root`: recursive, hidden entries skipped, symlinked folders followed (each folder
    once). A broken symlink, to a file or a folder, is skipped and named; an image or folder this user
    may not read stops the listing with one line naming it and the fix."""
    sizes, broken, seen, seen_twice = {}, [], set(), 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=_stop_at_unreadable(root)):
        identity = os.stat(dirpath)
        seen.add((identity.st_dev, identity.st_ino))
        keep = []
        for name in sorted(d for d in dirnames if not d.startswith(".")):
            try:
                sub = os.stat(os.path.join(dirpath, name))
            except OSError:  # its target went away since os.walk saw a folder there: a broken link now
                broken.append(Path(dirpath, name).relative_to(root).as_posix())
                continue
            if (sub.st_dev, sub.st_ino) in seen:
                seen_twice += 1
            else:
                seen.add((sub.st_dev, sub.st_ino))
                keep.append(name)
        dirnames[:] = keep
        for filename in filenames:
            if filename.startswith("."):
                continue
            path = Path(dirpath, filename)
            relative = path.relative_to(root).as_posix()
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                if _is_broken_link(path):  # os.walk files a broken link to a folder here, among the files
                    broken.append(relative)
                continue
            size = _image_size(path, root)
            if size is None:
                broken.append(relative)
            else:
                sizes[relative] = size
    listing = Listing(sorted(sizes), sizes, seen_twice, sorted(broken))
    _warn_about_skipped(root, listing)
    return listing


def _is_broken_link(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def _image_size(path: Path, root: Path) -> int | None:
    """The size of the image at `path`; None where it is a broken symlink (skipped, like a broken folder link)."""
    try:
        size = os.stat(path).st_size
    except PermissionError as err:
        raise _unreadable(path, root) from err
    except OSError:
        if path.is_symlink():  # target missing (ENOENT) or a link loop (ELOOP)
            return None
        raise
    if not os.access(path, os.R_OK):  # found now, not as a rejected face half way through preprocess
        raise _unreadable(path, root)
    return size


def _unreadable(path: Path, root: Path, folder: bool = False) -> UserError:
    mode = "-R a+rX" if folder else "a+r"
    return UserError(
        f"cannot read {path} (permission denied): make it readable (chmod {mode} {shlex.quote(str(path))}) "
        f"or move it out of {root}, then re-run"
    )


def _stop_at_unreadable(root: Path):
    """os.walk's onerror: a folder this user may not list stops the listing (os.walk would skip its images
    without a word); other errors (a folder removed while listing) keep os.walk's skipping."""

    def on_error(err: OSError) -> None:
        if isinstance(err, PermissionError):
            raise _unreadable(Path(err.filename), root, folder=True) from err

    return on_error


def _warn_about_skipped(root: Path, listing: Listing) -> None:
    if listing.folders_seen_twice:
        log.warning(
            "skipped %d folders under %s reached a second time through symlinks (loops or duplicates)",
            listing.folders_seen_twice,
            root,
        )
    if listing.broken_links:
        log.warning(
            "skipped %d broken symlinks under %s (their targets are missing; all named in %s): %s",
            len(listing.broken_links),
            root,
            SOURCE_FILE,
            _first_few(listing.broken_links),
        )


def _first_few(names: list[str], shown: int = 3) -> str:
    """A few names on one line (repr: a newline in a name stays `\\n`)."""
    return ", ".join(repr(name) for name in names[:shown]) + (", ..." if len(names) > shown else "")


def write_file_list(raw_dir: Path, root: Path, files: list[str], sizes: dict[str, int] | None = None) -> None:
    """files.jsonl: each file's name and size (`sizes`, from list_images; stat-ed here when not given)."""
    if sizes is None:
        sizes = {name: (root / name).stat().st_size for name in files}
    lines = (json.dumps({"name": name, "bytes": sizes[name]}) for name in files)
    write_text(raw_dir / FILE_LIST, "".join(line + "\n" for line in lines))


def read_file_list(raw_dir: Path) -> list[str] | None:
    """The names `download` listed, byte-exact (see the module docstring); None where it lists none."""
    path = raw_dir / FILE_LIST
    if not path.exists():
        if (raw_dir / "files.txt").exists():
            raise UserError(f"{raw_dir}/files.txt is an older file list: run `dvc repro -f download` to list again")
        return None
    try:
        return [json.loads(line)["name"] for line in path.read_text().splitlines() if line]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path} is corrupt ({err}): run `dvc repro -f download` to list the images again") from err


def find_partition_file(root: Path, explicit: str = "") -> Path | None:
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise UserError(f'data.partition_file={explicit} does not exist: fix the path or set it to ""')
        return path
    for candidate in [
        root / "list_eval_partition.txt",
        root.parent / "list_eval_partition.txt",
        *sorted(root.glob("*/list_eval_partition.txt")),
    ]:
        if candidate.is_file():
            return candidate
    return None


def _image_root(extracted: Path) -> Path:
    """The folder that holds the images: skip single wrapper directories of an archive."""
    root = extracted
    while True:
        entries = [e for e in root.iterdir() if not e.name.startswith(".")]
        if len(entries) == 1 and entries[0].is_dir():
            root = entries[0]
        else:
            return root


def _write_source(raw_dir: Path, record: handoff.RawSource, listing: Listing, origin: str = "") -> handoff.RawSource:
    """files.jsonl and SOURCE.json for a listed source. `origin` (where data.url's bytes came from after
    redirects) is already without secrets."""
    if not listing.files:
        broken = (
            f" ({len(listing.broken_links)} broken symlinks skipped, such as {listing.broken_links[0]!r}: "
            f"is their target mounted?)"
            if listing.broken_links
            else ""
        )
        raise UserError(
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {record.image_root}{broken}: "
            f"point data.folder or data.url at a folder or archive of images"
        )
    raw_dir.mkdir(parents=True, exist_ok=True)
    (raw_dir / "files.txt").unlink(missing_ok=True)  # an older list: files.jsonl replaces it
    write_file_list(raw_dir, Path(record.image_root), listing.files, listing.sizes)
    record = record.model_copy(
        update={
            "count": len(listing.files),
            "symlinked_folders_skipped": listing.folders_seen_twice,
            "fetched_from": origin,
            "broken_links": listing.broken_links,
        }
    )
    record.write(raw_dir / SOURCE_FILE)
    return record


def prepare_celeba(
    raw_dir: Path, download_dir: Path, base_url: str = GDRIVE_DOWNLOAD, **fetch_kwargs
) -> handoff.RawSource:
    """Download (or reuse) the four CelebA files, verify their md5 sums, extract the images."""
    store = download_dir / "celeba"
    digests = {}
    for file_id, md5, name in CELEBA_FILES:
        digests[name] = fetch_gdrive(file_id, store / name, md5, base_url=base_url, **fetch_kwargs)
    target = extract_archive(store / "img_align_celeba.zip", raw_dir / "celeba", digests["img_align_celeba.zip"])
    for _, _, name in CELEBA_FILES[1:]:
        shutil.copyfile(store / name, target / name)
    image_root = _image_root(target) if not (target / "img_align_celeba").is_dir() else target / "img_align_celeba"
    listed = list_images(image_root)
    if len(listed.files) != CELEBA_IMAGES:
        log.warning("img_align_celeba.zip holds %d images, not %d", len(listed.files), CELEBA_IMAGES)
    return _write_source(
        raw_dir,
        handoff.RawSource.of(
            "celeba", image_root, partition_file=str(target / "list_eval_partition.txt"), md5=digests, verified=True
        ),
        listed,
    )


def prepare_url(
    raw_dir: Path, download_dir: Path, url: str, sha256: str = "", partition_file: str = "", **fetch_kwargs
) -> handoff.RawSource:
    if not url:
        raise UserError("data.source=url needs data.url (a zip or tar archive of images)")
    name = Path(urlparse(url).path).name or "archive"
    headers = {}
    token = os.environ.get(TOKEN_ENV)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    # keyed by the URL, not the file name: another data.url never reuses this one's download
    store = download_dir / "url" / hashlib.sha256(url.encode()).hexdigest()[:16]
    digest = fetch(url, store / name, digest=sha256 or None, algorithm="sha256", headers=headers, **fetch_kwargs)
    if not sha256:
        logging.warning(
            "data.sha256 is empty: %s was not verified; its sha256 is %s (put it in params.yaml)", name, digest
        )
    target = extract_archive(store / name, raw_dir / "url", digest)
    image_root = _image_root(target)
    partition = find_partition_file(target, partition_file)
    requested = without_secrets(url)
    return _write_source(
        raw_dir,
        handoff.RawSource.of(
            "url",
            image_root,
            url=requested,
            sha256=digest,
            verified=bool(sha256),
            partition_file=str(partition) if partition else "",
        ),
        list_images(image_root),
        origin=fetched_from(store / name),
    )


def prepare_folder(raw_dir: Path, folder: str, partition_file: str = "") -> handoff.RawSource:
    if not folder:
        raise UserError("data.source=folder needs data.folder (a folder or archive of images)")
    path = Path(folder).expanduser()
    if not path.exists():
        raise UserError(f"data.folder={folder} does not exist: point it at a folder or archive of images")
    if path.is_file():
        digest = file_digest(path, "sha256")
        target = extract_archive(path, raw_dir / "folder", digest, downloaded=False)
        image_root, archive = _image_root(target), {"archive": str(path.resolve()), "sha256": digest}
    else:
        image_root, archive = path.resolve(), {}
    partition = find_partition_file(image_root, partition_file)
    return _write_source(
        raw_dir,
        handoff.RawSource.of(
            "folder", image_root, folder=folder, partition_file=str(partition) if partition else "", **archive
        ),
        list_images(image_root),
    )


def prepare_synthetic(raw_dir: Path, count: int, size: int, seed: int) -> handoff.RawSource:
    from PIL import Image

    from facegan.data.synthetic import render_face

    with atomic_dir(raw_dir / "synthetic") as tmp:
        for index in tqdm(range(count), desc="drawing synthetic faces", disable=None):
            Image.fromarray(render_face(seed, index, size)).save(tmp / f"{index:06d}.png")
    record = handoff.RawSource.of(
        "synthetic", raw_dir / "synthetic", count=count, synthetic_seed=seed, synthetic_size=size
    )
    record.write(raw_dir / SOURCE_FILE)
    return record


def prepare(data: settings.DataSettings, seed: int, raw_dir: Path) -> handoff.RawSource:
    """Run the source chosen by the `data` params into `raw_dir`; return the SOURCE.json record."""
    download_dir = Path(data.download_dir)
    source = data.source
    if source == "synthetic":
        return prepare_synthetic(raw_dir, data.synthetic_images, data.resolution, seed)
    if source == "celeba":
        return prepare_celeba(raw_dir, download_dir)
    if source == "url":
        return prepare_url(raw_dir, download_dir, data.url, data.sha256, data.partition_file)
    if source == "folder":
        return prepare_folder(raw_dir, data.folder, data.partition_file)
    raise UserError(f"data.source={source} is unknown: use celeba, url, folder or synthetic")

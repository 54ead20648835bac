"""The real download code against an HTTP server on 127.0.0.1 (no mocks): good archive, wrong
checksum, truncated transfer, truncated archive, HTML pages (error, Drive quota, Drive confirm
form), resume of a .part file, a redirect to another host, no network, never downloading twice; plus
the folder source (symlinks, broken links, unreadable files, odd names)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facegan.data import download as dl
from facegan.data.preprocess import ordered_files
from facegan.errors import UserError
from tests.helpers import data_settings

FAST = {"patience": dl.Patience(retries=1, backoff_s=0.0, timeout_s=10.0)}


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (160, 160, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for i in range(3):
            zf.writestr(f"faces/{i:03d}.png", _png(i))
    return buffer.getvalue()


GOOD = _zip_bytes()
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()
GOOD_MD5 = hashlib.md5(GOOD).hexdigest()
HTML_ERROR = b"<!DOCTYPE html><html><head><title>Error 404</title></head><body>Not found</body></html>"
QUOTA = (
    b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>"
    b"Too many users have viewed or downloaded this file recently.</body></html>"
)
CONFIRM = (
    b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>"
    b'<form id="download-form" action="/drive-file" method="get">'
    b'<input type="hidden" name="id" value="abc"><input type="hidden" name="confirm" value="t">'
    b'<input type="hidden" name="uuid" value="1234"></form></body></html>'
)


class Handler(BaseHTTPRequestHandler):
    log: list = []
    redirect_to = ""  # where /moved.zip sends the client (a test sets it)
    authorizations: list = []  # (port, path, Authorization header) of each request

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, body: bytes, content_type="application/zip", declared: int | None = None, status=200):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if declared is None else declared))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self):  # noqa: N802 - http.server's name
        path = self.path.split("?")[0]
        Handler.log.append((path, self.headers.get("Range")))
        Handler.authorizations.append((self.server.server_address[1], path, self.headers.get("Authorization")))
        if path == "/moved.zip":
            self.send_response(302)
            self.send_header("Location", Handler.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path in ("/good.zip", "/drive-file"):
            start = 0
            if self.headers.get("Range"):
                start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(GOOD) - 1}/{len(GOOD)}")
                self.send_header("Content-Length", str(len(GOOD) - start))
                self.send_header("Content-Type", "application/zip")
                self.end_headers()
                self.wfile.write(GOOD[start:])
                return
            self._send(GOOD)
        elif path == "/cut.zip":  # the connection drops half way, every time
            self._send(GOOD[: len(GOOD) // 2], declared=len(GOOD))
            self.close_connection = True
        elif path == "/short.zip":  # a mirror holding a truncated archive, served completely
            self._send(GOOD[:-40])
        elif path == "/error.zip":
            self._send(HTML_ERROR, "text/html; charset=utf-8")
        elif path == "/drive-quota":
            self._send(QUOTA, "text/html; charset=utf-8")
        elif path == "/drive-confirm":
            self._send(CONFIRM, "text/html; charset=utf-8")
        elif path == "/faces.tar.gz":
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
                for i in range(2):
                    data = _png(10 + i)
                    info = tarfile.TarInfo(f"set/{i}.png")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
            self._send(buffer.getvalue(), "application/gzip")
        else:
            self._send(b"missing", "text/plain", status=404)


def _serve():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def server():
    yield from _serve()


@pytest.fixture(scope="module")
def mirror():
    """A second host (another port: another origin to HTTP clients) that `server` redirects to."""
    yield from _serve()


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_good_archive_is_verified_extracted_and_never_downloaded_twice(server, tmp_path):
    record = dl.prepare_url(tmp_path / "raw", tmp_path / "dl", f"{server}/good.zip", GOOD_SHA, **FAST)
    assert record.count == 3 and record.verified and record.sha256 == GOOD_SHA
    (stored,) = (tmp_path / "dl/url").glob("*/good.zip")  # under a folder named by the URL's hash
    assert stored.read_bytes() == GOOD and not stored.with_name("good.zip.part").exists()
    images = sorted(Path(record.image_root).glob("*.png"))
    assert [p.name for p in images] == ["000.png", "001.png", "002.png"]
    assert images[0].read_bytes() == _png(0)
    requests_before = len(Handler.log)
    again = dl.prepare_url(tmp_path / "raw", tmp_path / "dl", f"{server}/good.zip", GOOD_SHA, **FAST)
    assert again.count == 3 and len(Handler.log) == requests_before  # no request at all


def test_wrong_checksum_stops_and_deletes_the_file(server, tmp_path):
    with pytest.raises(UserError) as err:
        dl.prepare_url(tmp_path / "raw", tmp_path / "dl", f"{server}/good.zip", "0" * 64, **FAST)
    message = _one_line(err)
    assert "wrong sha256" in message and "data.source=folder" in message
    assert not list((tmp_path / "dl/url").rglob("*.zip*"))  # neither the file nor a .part
    assert not (tmp_path / "raw/url").exists()


def test_transfer_that_keeps_breaking_off_keeps_the_part_and_says_so(server, tmp_path):
    with pytest.raises(UserError) as err:
        dl.fetch(f"{server}/cut.zip", tmp_path / "cut.zip", digest=GOOD_SHA, **FAST)
    message = _one_line(err)
    assert "broke off" in message and "re-run to resume" in message
    assert (tmp_path / "cut.zip.part").stat().st_size > 0
    assert not (tmp_path / "cut.zip").exists()


def test_partial_download_resumes_with_a_range_request(server, tmp_path):
    dest = tmp_path / "good.zip"
    half = len(GOOD) // 3
    (tmp_path / "good.zip.part").write_bytes(GOOD[:half])
    Handler.log.clear()
    assert dl.fetch(f"{server}/good.zip", dest, digest=GOOD_SHA, **FAST) == GOOD_SHA
    assert Handler.log == [("/good.zip", f"bytes={half}-")]
    assert dest.read_bytes() == GOOD


def test_truncated_archive_is_reported_and_nothing_is_extracted(server, tmp_path):
    with pytest.raises(UserError) as err:
        dl.prepare_url(tmp_path / "raw", tmp_path / "dl", f"{server}/short.zip", "", **FAST)
    message = _one_line(err)
    assert "truncated or corrupt" in message and "data.source=folder" in message
    assert not (tmp_path / "raw/url").exists()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "disk full while writing"),
        (OSError(errno.EFBIG, "File too large"), "a file grew past the file-size limit (`ulimit -f`"),
    ],
)
def test_a_full_disk_or_a_file_size_limit_while_extracting_is_not_called_a_corrupt_archive(
    tmp_path, monkeypatch, error, expected
):
    """The archive is fine: telling the user to delete and download 1.4 GB again would be wrong advice."""
    archive = tmp_path / "faces.zip"
    archive.write_bytes(GOOD)

    def cut(*args, **kwargs):
        raise error

    monkeypatch.setattr(zipfile.ZipFile, "extract", cut)
    with pytest.raises(UserError) as err:
        dl.extract_archive(archive, tmp_path / "out", GOOD_SHA)
    assert expected in _one_line(err) and "corrupt" not in _one_line(err)
    assert archive.read_bytes() == GOOD and not (tmp_path / "out").exists()


def test_html_error_page_is_not_taken_for_the_archive(server, tmp_path):
    with pytest.raises(UserError) as err:
        dl.prepare_url(tmp_path / "raw", tmp_path / "dl", f"{server}/error.zip", GOOD_SHA, **FAST)
    assert "web page instead of error.zip" in _one_line(err)
    assert not (tmp_path / "dl/url/error.zip").exists()


def test_google_drive_quota_page_says_wait_or_supply_by_hand(server, tmp_path):
    with pytest.raises(UserError) as err:
        dl.fetch_gdrive("abc", tmp_path / "img.zip", GOOD_MD5, base_url=f"{server}/drive-quota", **FAST)
    message = _one_line(err)
    assert "quota" in message and "data.source=folder" in message


def test_google_drive_confirm_form_is_followed_and_md5_checked(server, tmp_path):
    Handler.log.clear()
    assert (
        dl.fetch_gdrive("abc", tmp_path / "img.zip", GOOD_MD5, base_url=f"{server}/drive-confirm", **FAST) == GOOD_MD5
    )
    assert [p for p, _ in Handler.log] == ["/drive-confirm", "/drive-file"]
    assert (tmp_path / "img.zip").read_bytes() == GOOD


def test_a_redirect_records_the_host_the_bytes_came_from_and_no_secret(server, mirror, tmp_path, monkeypatch):
    """data.url redirects to a mirror with a pre-signed query: the record names the mirror (once only the
    address asked for), and neither the query tokens nor the bearer token reach the disk or the mirror."""
    monkeypatch.setenv(dl.TOKEN_ENV, "BEARER-SECRET")
    Handler.redirect_to = f"{mirror}/good.zip?X-Amz-Signature=SIGNED-SECRET&token=QUERY-SECRET"
    Handler.authorizations.clear()
    requested = f"{server}/moved.zip?token=ASKED-SECRET"
    record = dl.prepare_url(tmp_path / "raw", tmp_path / "dl", requested, GOOD_SHA, **FAST)
    assert record.count == 3 and record.url == f"{server}/moved.zip"
    notes = json.loads((tmp_path / "raw" / dl.SOURCE_FILE).read_text())
    assert notes["fetched_from"] == f"{mirror}/good.zip" and notes["url"] == f"{server}/moved.zip"
    written = b"".join(path.read_bytes() for path in tmp_path.rglob("*") if path.is_file() and path.suffix != ".png")
    assert b"SECRET" not in written
    sent = {(port, path): auth for port, path, auth in Handler.authorizations}
    assert sent == {
        (int(server.rsplit(":", 1)[1]), "/moved.zip"): "Bearer BEARER-SECRET",
        (int(mirror.rsplit(":", 1)[1]), "/good.zip"): None,
    }
    # a re-run reuses the verified download (no request) and still names where it came from
    again = dl.prepare_url(tmp_path / "raw2", tmp_path / "dl", requested, GOOD_SHA, **FAST)
    assert again.count == 3 and len(Handler.authorizations) == 2
    assert json.loads((tmp_path / "raw2" / dl.SOURCE_FILE).read_text())["fetched_from"] == f"{mirror}/good.zip"


def test_no_network_is_one_line_with_the_manual_route(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UserError) as err:
        dl.fetch(f"http://127.0.0.1:{port}/x.zip", tmp_path / "x.zip", **FAST)
    message = _one_line(err)
    assert "cannot reach 127.0.0.1" in message and "data.source=folder" in message


def test_celeba_files_match_torchvision(tmp_path):
    names = [name for _, _, name in dl.CELEBA_FILES]
    assert names == [
        "img_align_celeba.zip",
        "list_attr_celeba.txt",
        "list_eval_partition.txt",
        "list_landmarks_align_celeba.txt",
    ]
    assert all(len(md5) == 32 for _, md5, _ in dl.CELEBA_FILES)


def test_tar_archive_from_a_mirror(server, tmp_path):
    record = dl.prepare_url(tmp_path / "raw", tmp_path / "dl", f"{server}/faces.tar.gz", "", **FAST)
    assert record.count == 2 and not record.verified and len(record.sha256) == 64


def test_folder_source_reads_in_place_and_orders_by_partition(tmp_path):
    folder = tmp_path / "celeba"
    (folder / "img").mkdir(parents=True)
    for name in ("000003.jpg", "000001.jpg", "000002.jpg", "extra.png"):
        (folder / "img" / name).write_bytes(_png(1))
    (folder / "img" / "list_eval_partition.txt").write_text("000001.jpg 2\n000002.jpg 0\n000003.jpg 1\n")
    record = dl.prepare_folder(tmp_path / "raw", str(folder / "img"))
    assert record.image_root == str((folder / "img").resolve()) and record.count == 4
    assert ordered_files(tmp_path / "raw", record) == ["000002.jpg", "000003.jpg", "000001.jpg", "extra.png"]
    with pytest.raises(UserError, match="does not exist"):
        dl.prepare_folder(tmp_path / "raw", str(tmp_path / "nowhere"))


def test_a_changed_url_never_reuses_the_old_download(server, tmp_path):
    """Downloads are keyed by URL: data.url pointing at a host that is not listening fails, even though a
    file of the same name was downloaded from the old URL (with data.sha256 empty)."""
    dl.prepare_url(tmp_path / "raw", tmp_path / "dl", f"{server}/good.zip", "", **FAST)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UserError) as err:
        dl.prepare_url(tmp_path / "raw", tmp_path / "dl", f"http://127.0.0.1:{port}/good.zip", "", **FAST)
    assert f"cannot reach 127.0.0.1:{port}" in _one_line(err)
    assert len(list((tmp_path / "dl/url").glob("*/good.zip"))) == 1


def test_a_users_truncated_archive_or_saved_web_page_is_not_to_be_deleted(tmp_path):
    """data.folder names the user's own file: the fix is a complete copy, never 'delete it and download'."""
    truncated = tmp_path / "mine.zip"
    truncated.write_bytes(GOOD[: len(GOOD) // 2])
    with pytest.raises(UserError) as err:
        dl.prepare_folder(tmp_path / "raw", str(truncated))
    message = _one_line(err)
    assert "truncated or corrupt" in message and "replace" in message and "download" not in message
    page = tmp_path / "page.zip"
    page.write_bytes(b"<!DOCTYPE html><html><body>Sign in to download</body></html>")
    with pytest.raises(UserError) as err:
        dl.prepare_folder(tmp_path / "raw", str(page))
    message = _one_line(err)
    assert "is a web page saved in place of an archive" in message and "delete" not in message


def test_any_file_name_is_listed_byte_exact_and_read(tmp_path):
    """A Latin-1 byte (once `UnicodeEncodeError ... this is a bug`), a tab and a newline (once split into
    made-up entries) in file names: each image is listed under its own name, read, and written to the
    manifest as the bytes it has on disk."""
    from facegan.data.preprocess import PARTIAL_MANIFEST, _fingerprint, _Manifest, load_rgb

    folder = tmp_path / "odd"
    folder.mkdir()
    names = [os.fsdecode(b"caf\xe9.png"), "tab\tname.png", "new\nline.png", "plain.png"]
    for seed, name in enumerate(names):
        (folder / name).write_bytes(_png(seed))
    record = dl.prepare_folder(tmp_path / "raw", str(folder))
    listed = ordered_files(tmp_path / "raw", record)
    assert record.count == 4 and sorted(listed) == sorted(names)
    for seed, name in enumerate(names):
        image, why = load_rgb(Path(record.image_root) / name)
        assert why == "" and np.array_equal(image, np.asarray(Image.open(io.BytesIO(_png(seed)))))
    assert _fingerprint(data_settings(resolution=64, num_faces=4), listed, record)
    manifest = _Manifest(tmp_path / PARTIAL_MANIFEST, None)
    for name in listed:
        manifest.add({"source_file": name, "status": "rejected", "reason": "no_face"})
    manifest.flush()
    manifest.close()
    assert b"caf\xe9.png" in (tmp_path / PARTIAL_MANIFEST).read_bytes() and manifest.counts()["no_face"] == 4


def test_symlinked_folders_are_followed_and_a_loop_is_listed_once(tmp_path):
    real, other = tmp_path / "real", tmp_path / "other"
    real.mkdir(), other.mkdir()
    for i in range(3):
        (real / f"{i}.png").write_bytes(_png(i))
    for i in range(2):
        (other / f"o{i}.png").write_bytes(_png(10 + i))
    (real / "more").symlink_to(other)  # a symlinked subfolder: once skipped silently
    (real / "again").symlink_to(other)  # a second link to the same folder: listed once
    (other / "back").symlink_to(real)  # a loop
    record = dl.prepare_folder(tmp_path / "raw", str(real))
    listed = ordered_files(tmp_path / "raw", record)
    assert listed == ["0.png", "1.png", "2.png", "again/o0.png", "again/o1.png"]
    assert record.count == 5 and record.symlinked_folders_skipped == 2
    assert json.loads((tmp_path / "raw" / "SOURCE.json").read_text())["symlinked_folders_skipped"] == 2


def test_a_broken_symlink_is_skipped_and_named_not_fatal(tmp_path, caplog):
    """A dangling link among the images (a photo deleted, a drive not mounted) once aborted the whole download
    with a generic 'does not exist': now the real images are listed and the broken links named."""
    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(_png(i))
    (folder / "gone.png").symlink_to(tmp_path / "deleted.png")  # a link to an image that is not there
    (folder / "unmounted").symlink_to(tmp_path / "no-drive")  # a link to a folder that is not there
    with caplog.at_level(logging.WARNING, logger=dl.__name__):
        record = dl.prepare_folder(tmp_path / "raw", str(folder))
    assert record.count == 3 and ordered_files(tmp_path / "raw", record) == ["0.png", "1.png", "2.png"]
    notes = json.loads((tmp_path / "raw" / dl.SOURCE_FILE).read_text())
    assert notes["broken_links"] == ["gone.png", "unmounted"]
    (warning,) = [r.getMessage() for r in caplog.records if "broken symlinks" in r.getMessage()]
    assert "skipped 2 broken symlinks" in warning and "'gone.png'" in warning and "\n" not in warning


def test_an_unreadable_image_or_folder_is_one_line_naming_it_and_the_fix(tmp_path, monkeypatch):
    """Permission denied is found while listing (not as rejected faces half way through preprocess, nor an
    unlistable folder's images silently missing): one line naming the path and the chmod that fixes it.
    Tests run as root, whom chmod does not stop, so the denial is the operating system's answer, simulated."""
    folder = tmp_path / "faces"
    (folder / "locked").mkdir(parents=True)
    for name in ("a.png", "secret.png", "locked/b.png"):
        (folder / name).write_bytes(_png(1))
    real_access, real_scandir = os.access, os.scandir
    monkeypatch.setattr(
        os, "access", lambda path, mode, **kw: Path(path).name != "secret.png" and real_access(path, mode, **kw)
    )
    with pytest.raises(UserError) as err:
        dl.prepare_folder(tmp_path / "raw", str(folder))
    message = _one_line(err)
    assert f"cannot read {folder / 'secret.png'} (permission denied)" in message and "chmod a+r" in message
    monkeypatch.setattr(os, "access", real_access)

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(UserError) as err:
        dl.prepare_folder(tmp_path / "raw", str(folder))
    message = _one_line(err)
    assert f"cannot read {folder / 'locked'} (permission denied)" in message and "chmod -R a+rX" in message


def test_source_json_is_a_declared_shape_that_preprocess_checks(tmp_path):
    """SOURCE.json is facegan.handoff.RawSource: read back field for field, and a file of another shape
    (an older version, a hand edit) is one line naming the stage that writes it."""
    from facegan import handoff
    from facegan.data.preprocess import preprocess

    folder = tmp_path / "img"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(_png(1))
    record = dl.prepare_folder(tmp_path / "raw", str(folder))
    assert handoff.RawSource.read(tmp_path / "raw" / "SOURCE.json") == record
    assert (record.source, record.count, record.folder, record.url, record.md5) == ("folder", 2, str(folder), "", {})
    edited = json.loads((tmp_path / "raw" / "SOURCE.json").read_text())
    edited["size"] = edited.pop("synthetic_size")  # SOURCE.json as an older download wrote it
    (tmp_path / "raw" / "SOURCE.json").write_text(json.dumps(edited))
    data = {"source": "folder", "resolution": 32, "num_faces": 2}
    with pytest.raises(handoff.HandoffError) as err:
        preprocess(data, tmp_path / "raw", tmp_path / "faces", tmp_path / "report.json")
    message = str(err.value)
    assert "\n" not in message and "SOURCE.json does not have the shape of RawSource" in message
    assert "missing synthetic_size; unknown size" in message and "dvc repro download" in message

"""Image sources: local files, file://, http(s) against a loopback server in a thread,
fsspec, the host policy; and a batch of bad inputs that each end as a failed image
with a readable reason while the rest of the batch completes (SQLite and PostgreSQL)."""

from __future__ import annotations

import http.server
import io
import ipaddress
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from conftest_db import db_url, migrated_url, pg_url, sqlite_url  # noqa: F401
from PIL import Image

import integrations.sources as sources
from integrations.settings import Settings
from integrations.sources import SourceError, fetch_image, read_image_bytes

CAP = 64 * 1024


def _jpeg(seed: int = 0, size=(48, 64)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    b = io.BytesIO()
    Image.fromarray(arr).save(b, "JPEG", quality=90)
    return b.getvalue()


def _png_bomb(w: int = 30000, h: int = 30000) -> bytes:
    """A tiny PNG whose header declares w x h pixels (a decompression bomb)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b"")


GOOD = _jpeg()


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, code: int, body: bytes, ctype: str = "image/jpeg", length: bool = True) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up on purpose (size cap, timeout): expected, not a server error

    def do_GET(self):  # noqa: N802
        p = self.path
        if p == "/ok.jpg":
            self._send(200, GOOD)
        elif p == "/octet":
            self._send(200, GOOD, "application/octet-stream")
        elif p == "/missing.jpg":
            self._send(404, b"not found", "text/plain")
        elif p == "/error.jpg":
            self._send(503, b"busy", "text/plain")
        elif p == "/slow.jpg":
            time.sleep(3)
            self._send(200, GOOD)
        elif p == "/trickle.jpg":  # each byte well within the read timeout, the whole far over it
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            try:
                for i in range(40):
                    self.wfile.write(GOOD[i : i + 1])
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
        elif p == "/big.jpg":
            self._send(200, b"\xff" * (CAP * 4))
        elif p == "/big-chunked.jpg":  # no Content-Length: the cap is enforced while streaming
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            try:
                for _ in range(16):
                    self.wfile.write(b"\xff" * (CAP // 2))
            except OSError:
                pass
            self.close_connection = True
        elif p == "/bomb.png":
            self._send(200, _png_bomb(), "image/png")
        elif p == "/fake.jpg":
            self._send(200, b"<html>this is not an image</html>", "image/jpeg")
        elif p == "/page.html":
            self._send(200, b"<html>hello</html>", "text/html; charset=utf-8")
        elif p == "/truncated.jpg":
            self._send(200, GOOD[: len(GOOD) // 2])
        elif p == "/redirect-ok":
            self.send_response(302)
            self.send_header("Location", "/ok.jpg")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif p == "/redirect-metadata":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif p == "/redirect-loop":
            self.send_response(302)
            self.send_header("Location", "/redirect-loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, b"", "text/plain")


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def loopback_only(monkeypatch):
    """The default host policy, except that loopback (our test server) is allowed:
    link-local, private and the rest stay refused."""
    original = sources.refused_reason

    def policy(ip):
        if ip.is_loopback:
            return None
        return original(ip)

    monkeypatch.setattr(sources, "refused_reason", policy)


def settings(**kw) -> Settings:
    base = dict(http_timeout_s=1.0, max_download_bytes=CAP, max_image_pixels=10_000_000, allow_private_hosts=False)
    base.update(kw)
    return Settings(**base)


# --------------------------------------------------------------------------- local files and fsspec


def test_local_path_and_file_uri(tmp_path):
    p = tmp_path / "a b.jpg"
    p.write_bytes(GOOD)
    assert read_image_bytes(str(p), settings()) == GOOD
    assert read_image_bytes(p.as_uri(), settings()) == GOOD  # file:// with a quoted space
    img = fetch_image(str(p), settings())
    assert (img.width, img.height, img.size) == (64, 48, len(GOOD)) and len(img.sha256) == 64
    assert img.image.shape == (48, 64, 3)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda d: str(d / "nope.jpg"), "file not found"),
        (lambda d: str(d), "is a directory"),
        (lambda d: "file://otherhost/etc/passwd", "another host"),
        (lambda d: _write(d / "big.jpg", b"\0" * (CAP + 1)), "cap"),
        (lambda d: _write(d / "t.jpg", GOOD[: len(GOOD) // 2]), "truncated"),
        (lambda d: _write(d / "x.jpg", b"just some text"), "not a recognised image"),
        (lambda d: _write(d / "bomb.png", _png_bomb()), "decompression bomb"),
        (lambda d: _write(d / "empty.jpg", b""), "no data"),
        (lambda d: "", "empty URI"),
    ],
)
def test_local_failures_have_reasons(tmp_path, make, reason):
    with pytest.raises(SourceError, match=reason) as info:
        fetch_image(make(tmp_path), settings())
    assert info.value.retryable is False


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_pixel_cap_is_the_setting(tmp_path):
    path = _write(tmp_path / "ok.jpg", GOOD)
    with pytest.raises(SourceError, match="pixels"):
        fetch_image(path, settings(max_image_pixels=1000))


def test_fsspec_memory_filesystem():
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    fs.pipe("/clasp-test/ok.jpg", GOOD)
    fs.pipe("/clasp-test/big.jpg", b"\0" * (CAP + 10))
    try:
        assert read_image_bytes("memory://clasp-test/ok.jpg", settings()) == GOOD
        with pytest.raises(SourceError, match="not found"):
            read_image_bytes("memory://clasp-test/nope.jpg", settings())
        with pytest.raises(SourceError, match="cap"):
            read_image_bytes("memory://clasp-test/big.jpg", settings())
        with pytest.raises(SourceError, match="no fsspec filesystem|unsupported|cannot read"):
            read_image_bytes("nosuchproto://bucket/key.jpg", settings())
    finally:
        fs.rm("/clasp-test", recursive=True)


# --------------------------------------------------------------------------- host policy


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://127.0.0.1/x.jpg", "loopback"),
        ("http://localhost:8080/x.jpg", "loopback"),
        ("http://[::1]/x.jpg", "loopback"),
        ("http://[::ffff:127.0.0.1]/x.jpg", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.7/x.jpg", "private"),
        ("http://192.168.1.1/x.jpg", "private"),
        ("http://172.16.0.1/x.jpg", "private"),
        ("http://0.0.0.0/x.jpg", "unspecified"),
        ("http://224.0.0.1/x.jpg", "multicast"),
    ],
)
def test_default_policy_refuses_internal_addresses_without_traffic(url, why, monkeypatch):
    def no_traffic(*a, **k):
        raise AssertionError("no request may be made to a refused host")

    monkeypatch.setattr(sources.httpx, "Client", no_traffic)
    monkeypatch.setattr(sources.httpx.HTTPTransport, "handle_request", no_traffic)
    with pytest.raises(SourceError, match=f"refused.*{why}") as info:
        read_image_bytes(url, Settings())  # the product defaults
    assert info.value.retryable is False and "CLASP_ALLOW_PRIVATE_HOSTS" in str(info.value)


def test_public_addresses_pass_the_policy():
    for ip in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"):
        assert sources.refused_reason(ipaddress.ip_address(ip)) is None


def test_allow_private_hosts_reaches_the_loopback_server(server):
    assert read_image_bytes(f"{server}/ok.jpg", settings(allow_private_hosts=True)) == GOOD


# --------------------------------------------------------------------------- http(s)


def test_http_ok_octet_stream_and_redirect(server, loopback_only):
    assert read_image_bytes(f"{server}/ok.jpg", settings()) == GOOD
    assert read_image_bytes(f"{server}/octet", settings()) == GOOD
    assert read_image_bytes(f"{server}/redirect-ok", settings()) == GOOD
    assert fetch_image(f"{server}/ok.jpg", settings()).image.shape == (48, 64, 3)


@pytest.mark.parametrize(
    "path, reason, retryable",
    [
        ("/missing.jpg", "HTTP 404 Not Found", False),
        ("/error.jpg", "HTTP 503", True),
        ("/slow.jpg", "timed out after 0.5 s", True),
        ("/trickle.jpg", "timed out after 0.5 s", True),
        ("/big.jpg", "over the .* cap", False),
        ("/big-chunked.jpg", "exceeds the .* cap", False),
        ("/bomb.png", "decompression bomb", False),
        ("/fake.jpg", "not a recognised image", False),
        ("/truncated.jpg", "truncated", False),
        ("/page.html", "content type is 'text/html', not an image", False),
        ("/redirect-metadata", "refused.*169.254.169.254.*link-local", False),
        ("/redirect-loop", "more than 5 redirects", False),
    ],
)
def test_http_failures_have_reasons(server, loopback_only, path, reason, retryable):
    # http_timeout_s is a total deadline: 0.5 s where the timeout is the point, 2 s
    # elsewhere so that a loaded machine does not turn a 404 into a timeout.
    timeout_s = 0.5 if "timed out" in reason else 2.0
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=reason) as info:
        fetch_image(f"{server}{path}", settings(http_timeout_s=timeout_s))
    assert info.value.retryable is retryable
    assert time.monotonic() - t0 < 2.5  # the timeout bounds the whole download


def test_invalid_url():
    with pytest.raises(SourceError, match="invalid URL"):
        read_image_bytes("http://[zz]/x.jpg", settings())
    with pytest.raises(SourceError, match="no host"):
        read_image_bytes("http:///x.jpg", settings())


def test_unreachable_port_is_retryable(loopback_only):
    with pytest.raises(SourceError, match="HTTP request failed") as info:
        read_image_bytes("http://127.0.0.1:9/x.jpg", settings())
    assert info.value.retryable


# --------------------------------------------------------------------------- a batch of bad inputs


def test_bad_inputs_fail_their_image_and_the_batch_completes(migrated_url, server, loopback_only, tmp_path):
    from conftest_db import make_segmentation

    from integrations.db import (
        add_images,
        claim_batch,
        counts_by_status,
        make_engine,
        make_session_factory,
        record_failure,
        start_run,
        store_segmentation,
    )
    from integrations.db.models import Image

    good_local = _write(tmp_path / "good.jpg", GOOD)
    good_local2 = _write(tmp_path / "good2.jpg", _jpeg(1))
    bad = {
        str(tmp_path / "missing.jpg"): "file not found",
        _write(tmp_path / "trunc.jpg", GOOD[: len(GOOD) // 2]): "truncated",
        _write(tmp_path / "notes.jpg", b"meeting notes, not a picture"): "not a recognised image",
        f"{server}/missing.jpg": "HTTP 404",
        f"{server}/slow.jpg": "timed out",
        f"{server}/big.jpg": "cap",
        f"{server}/bomb.png": "decompression bomb",
        "http://169.254.169.254/latest/meta-data/iam": "refused",
        f"{server}/page.html": "not an image",
    }
    uris = [good_local, *bad, f"{server}/ok.jpg", good_local2]
    cfg = settings(http_timeout_s=2.0)  # a total deadline; /slow.jpg answers after 3 s
    engine = make_engine(migrated_url)
    with make_session_factory(engine)() as s:
        add_images(s, uris)
        run = start_run(s, {"backbone": "classic"})
        while batch := claim_batch(s, "w", 20, lease_seconds=60, max_attempts=2):
            for item in batch:
                try:
                    img = fetch_image(item.uri, cfg)
                except SourceError as exc:
                    record_failure(s, item.id, exc.reason, "w", retryable=exc.retryable, max_attempts=2, run_id=run)
                    continue
                store_segmentation(s, item.id, run, make_segmentation(img.height, img.width), "w")
        assert counts_by_status(s)["segmented"] == 3
        assert counts_by_status(s)["failed"] == len(bad)
        rows = {r.uri: r for r in s.query(Image)}
        for uri, reason in bad.items():
            assert rows[uri].status == "failed" and reason in rows[uri].last_error, (uri, rows[uri].last_error)
        assert rows[f"{server}/slow.jpg"].attempts == 2  # retried once, then failed
        assert rows[f"{server}/missing.jpg"].attempts == 1  # not worth retrying
    engine.dispose()


# --------------------------------------------------------------------------- host policy for every scheme


class CountingListener:
    """A TCP listener on 127.0.0.1 that counts accepted connections and closes each at once."""

    def __init__(self):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def listener():
    pytest.importorskip("fsspec")
    lst = CountingListener()
    yield lst
    lst.close()


NETWORK_FORMS = [
    "ftp://127.0.0.1:{p}/x.jpg",
    "ftp://localhost:{p}/x.jpg",
    "FTP://127.0.0.1:{p}/x.jpg",
    "ftp://user:secret@127.0.0.1:{p}/x.jpg",
    "ftp://2130706433:{p}/x.jpg",
    "ftp://0x7f000001:{p}/x.jpg",
    "ftp://127.1:{p}/x.jpg",
    "ftp://[::ffff:127.0.0.1]:{p}/x.jpg",
    "sftp://127.0.0.1:{p}/x.jpg",
    "ssh://127.0.0.1:{p}/x.jpg",
    "smb://127.0.0.1:{p}/share/x.jpg",
    "webhdfs://127.0.0.1:{p}/x.jpg",
    "hdfs://127.0.0.1:{p}/x.jpg",
    "http://127.0.0.1:{p}/x.jpg",
    "simplecache::ftp://127.0.0.1:{p}/x.jpg",
    "filecache::webhdfs://127.0.0.1:{p}/x.jpg",
    "blockcache::http://127.0.0.1:{p}/x.jpg",
    "simplecache::http://localhost:{p}/x.jpg",
    "zip://x.jpg::http://127.0.0.1:{p}/a.zip",
    "zip://x.jpg::ftp://127.0.0.1:{p}/a.zip",
    "tar://x.jpg::simplecache::ftp://127.0.0.1:{p}/a.tar",
    "simplecache::zip://x.jpg::https://127.0.0.1:{p}/a.zip",
]


@pytest.mark.parametrize("form", NETWORK_FORMS)
def test_every_scheme_and_chain_obeys_the_host_policy_without_connecting(form, listener, monkeypatch):
    monkeypatch.delenv("CLASP_ALLOWED_SCHEMES", raising=False)
    uri = form.format(p=listener.port)
    with pytest.raises(SourceError, match="refused|no fsspec filesystem") as info:
        read_image_bytes(uri, settings(http_timeout_s=2.0))
    assert info.value.retryable is False, f"{uri}: a policy refusal must be permanent ({info.value.reason})"
    time.sleep(0.05)
    assert listener.accepted == 0, f"{uri} connected {listener.accepted} time(s) to the loopback listener"


def test_unchecked_scheme_is_refused_unless_allowed_and_then_still_host_checked(listener, monkeypatch):
    uri = f"webhdfs://127.0.0.1:{listener.port}/x.jpg"
    monkeypatch.delenv("CLASP_ALLOWED_SCHEMES", raising=False)
    with pytest.raises(SourceError, match="CLASP_ALLOWED_SCHEMES") as info:
        read_image_bytes("webhdfs://8.8.8.8:50070/x.jpg", settings())
    assert info.value.retryable is False
    monkeypatch.setenv("CLASP_ALLOWED_SCHEMES", "s3, webhdfs")
    with pytest.raises(SourceError, match="refused.*loopback"):  # allowed scheme, loopback host
        read_image_bytes(uri, settings())
    assert listener.accepted == 0
    with pytest.raises(SourceError):  # allowed scheme and private hosts: it does connect
        read_image_bytes(uri, settings(allow_private_hosts=True, http_timeout_s=2.0))
    assert listener.accepted >= 1


def test_checked_scheme_connects_when_private_hosts_are_allowed(listener, monkeypatch):
    monkeypatch.delenv("CLASP_ALLOWED_SCHEMES", raising=False)
    for form in ("ftp://localhost:{p}/x.jpg", "simplecache::ftp://127.0.0.1:{p}/x.jpg"):
        before = listener.accepted
        with pytest.raises(SourceError):  # the listener hangs up: a store error, not a refusal
            read_image_bytes(form.format(p=listener.port), settings(allow_private_hosts=True))
        assert listener.accepted > before, form


def test_checked_hosts_are_pinned_to_the_checked_address():
    pytest.importorskip("fsspec")
    out = sources.checked_fsspec_uri("simplecache::ftp://u:p@localhost:2121/a/x.jpg", settings(allow_private_hosts=True))
    assert out == "simplecache::ftp://u:p@127.0.0.1:2121/a/x.jpg"
    assert sources.checked_fsspec_uri("memory://b/x.jpg", settings()) == "memory://b/x.jpg"


# --------------------------------------------------------------------------- special files


def _special_files(tmp_path):
    """name -> (path, expected words): a FIFO, a socket, a device and a directory, all named like images."""
    import os
    import socket

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock.jpg"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    return {
        "fifo": (str(fifo), "FIFO"),
        "socket": (str(sock_path), "socket"),
        "device": ("/dev/zero", "character device"),
        "directory": (str(folder), "directory"),
    }, sock


def _fails_quickly(fn, path, timeout=5.0):
    """Run fn(path) in a thread; the error it raised, or a failure if it is still blocked."""
    import os

    box = {}

    def target():
        try:
            fn(path)
        except Exception as exc:  # noqa: BLE001
            box["exc"] = exc

    t = threading.Thread(target=target, daemon=True)
    t0 = time.monotonic()
    t.start()
    t.join(timeout)
    if t.is_alive():
        if path.endswith("pipe.jpg"):  # unblock the reader so the thread ends
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        pytest.fail(f"reading {path} still blocked after {timeout} s")
    return box.get("exc"), time.monotonic() - t0


@pytest.mark.parametrize("kind", ["fifo", "socket", "device", "directory"])
def test_special_files_fail_alone_at_once_with_their_kind(tmp_path, kind):
    files, sock = _special_files(tmp_path)
    path, words = files[kind]
    try:
        for uri in (path, "file://" + path):
            exc, took = _fails_quickly(lambda u: fetch_image(u, settings()), uri)
            assert isinstance(exc, SourceError), exc
            assert words in exc.reason and exc.retryable is False, exc.reason
            assert took < 2.0
    finally:
        sock.close()


def test_non_utf8_file_names_are_read_through_their_text_uri(tmp_path):
    import os

    raw = os.fsencode(str(tmp_path)) + b"/bad\xff name.jpg"
    with open(raw, "wb") as f:
        f.write(GOOD)
    uri = sources.normalize_uri(os.fsdecode(raw))
    uri.encode("utf-8")  # storable and printable
    assert uri.startswith("file://") and "%FF" in uri
    assert read_image_bytes(uri, settings()) == GOOD


# --------------------------------------------------------------------------- total deadline


class TricklingServer:
    """A raw loopback HTTP server that sends `prefix` at once, then one byte of `trickle` per `every` s."""

    def __init__(self, prefix: bytes, trickle: bytes, every: float = 0.2):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/x.jpg"
        self.prefix, self.trickle, self.every = prefix, trickle, every
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.recv(4096)
            try:
                conn.sendall(self.prefix)
                for i in range(len(self.trickle)):
                    conn.sendall(self.trickle[i : i + 1])
                    time.sleep(self.every)
            except OSError:
                return  # the client hung up: expected

    def close(self):
        self.sock.close()


@pytest.mark.parametrize(
    "prefix, trickle",
    [
        (b"", b"HTTP/1.1 200 OK\r\n" * 20),  # the status line
        (b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"a" * 200 + b"\r\n"),  # the headers
        (b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 999\r\n\r\n", b"\xff" * 200),  # the body
    ],
    ids=["status-line", "headers", "body"],
)
def test_http_timeout_is_a_total_deadline_against_trickling_peers(loopback_only, prefix, trickle):
    srv = TricklingServer(prefix, trickle)
    try:
        t0 = time.monotonic()
        with pytest.raises(SourceError, match="timed out after 1 s") as info:
            read_image_bytes(srv.url, settings(http_timeout_s=1.0))
        took = time.monotonic() - t0
        assert info.value.retryable is True
        assert took < 1.8, f"the read took {took:.1f} s with a 1 s timeout"
    finally:
        srv.close()

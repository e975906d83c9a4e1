"""Image sources behind one small interface: read bytes from a URI, safely.

    data = read_image_bytes(uri, settings)          # bytes, or SourceError
    img = fetch_image(uri, settings)                # bytes + sha256 + decoded RGB array

Sources:
- local paths and `file://` URIs;
- `http://` / `https://` with httpx: an overall deadline (`http_timeout_s`, over
  connect, status line, headers and body, also against servers that trickle
  bytes), a size cap (`max_download_bytes`, checked
  on Content-Length and while streaming, after content decoding), an image
  content type (`image/*`, or a generic `application/octet-stream` as object
  stores send it; the decode check catches the rest), and a host policy: the
  host is resolved and loopback, link-local (cloud metadata), private,
  reserved, multicast and unspecified addresses are refused unless
  `allow_private_hosts`, so a URL planted in the database cannot reach internal
  services. The connection goes to the address that was checked (no DNS
  rebinding between the check and the request), redirects are followed by hand
  (at most 5) and every hop is checked again. Environment proxies are ignored;
- anything else with a scheme (`s3://`, `gs://`, `memory://`, `ftp://`, chained
  `simplecache::ftp://...` ...) through `fsspec`, an optional extra (`pip install
  clasp[fsspec]` plus the store's own package, e.g. s3fs), behind the same host
  policy: every link of a chain is checked; ftp/sftp/smb hosts are resolved,
  refused like http(s) hosts and pinned; schemes whose target CLASP cannot check
  (s3, gs, webhdfs, http inside a chain ...) are refused unless listed in
  CLASP_ALLOWED_SCHEMES.

Every failure is a `SourceError` (an `InvalidImageError`) naming the URI, with
a reason in words and `retryable` (timeouts, connection errors, 5xx/429: yes;
missing, not an image, too big, refused host, 4xx: no). A worker records it
against that image and goes on with the rest of its batch.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import socket
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpcore
import httpx
import numpy as np

from clasp_engine.errors import InvalidImageError
from clasp_engine.images import SpecialFileError, read_regular_file
from integrations.settings import Settings

MAX_REDIRECTS = 5
GENERIC_BINARY_TYPES = ("application/octet-stream", "binary/octet-stream")
USER_AGENT = "clasp-image-fetcher/0.1"


class SourceError(InvalidImageError):
    """An image source could not be read. `retryable`: worth another attempt later."""

    def __init__(self, source: str, reason: str, *, retryable: bool = False):
        super().__init__(source, reason)
        self.retryable = retryable


class ImageSource(Protocol):
    def read(self, uri: str, settings: Settings) -> bytes: ...


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n} bytes"


# --------------------------------------------------------------------------- local files


def text_uri(path: str) -> str:
    """`path` as text the database and terminals can hold: itself, or, when the name is not
    valid UTF-8 (bytes smuggled in by surrogateescape), a percent-encoded `file://` URI that
    names exactly the same bytes."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return Path(os.path.abspath(path)).as_uri()
    return path


class LocalSource:
    """Paths and `file://` URIs (regular files only: FIFOs, sockets and devices fail at once)."""

    def read(self, uri: str, settings: Settings) -> bytes:
        path = self.path_of(uri)
        cap = settings.max_download_bytes
        try:
            if not path.exists():
                raise SourceError(uri, "file not found")
            if path.is_dir():
                raise SourceError(uri, "is a directory, not an image file")
            size = path.stat().st_size
            if size > cap:
                raise SourceError(uri, f"file is {_mb(size)}, over the {_mb(cap)} cap (max_download_bytes)")
            data = read_regular_file(path, cap + 1)
        except SourceError:
            raise
        except SpecialFileError as exc:
            raise SourceError(uri, str(exc)) from None
        except PermissionError:
            raise SourceError(uri, "permission denied") from None
        except OSError as exc:
            raise SourceError(uri, f"cannot read the file: {exc.strerror or exc}", retryable=True) from None
        if len(data) > cap:
            raise SourceError(uri, f"file is over the {_mb(cap)} cap (max_download_bytes)")
        return data

    @staticmethod
    def path_of(uri: str) -> Path:
        if uri.startswith("file:"):
            parsed = urllib.parse.urlparse(uri)
            if parsed.netloc not in ("", "localhost"):
                raise SourceError(uri, f"file:// URI names another host ({parsed.netloc!r}); only local files are read")
            # bytes, then the file system's decoding: names that are not UTF-8 survive
            return Path(os.fsdecode(urllib.parse.unquote_to_bytes(parsed.path)))
        return Path(uri).expanduser()


# --------------------------------------------------------------------------- http(s)


def refused_reason(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address is refused by the default host policy, or None if it is public."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (where cloud metadata services live)"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private-network address"
    if ip.is_reserved or not ip.is_global:
        return "a reserved / non-public address"
    return None


def resolve_allowed(uri: str, host: str, port: int, settings: Settings) -> str:
    """Resolve `host`; refuse it unless every address is allowed. Returns the address to connect to."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
        addresses = [ip]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise SourceError(uri, f"cannot resolve host {host!r}: {exc}", retryable=True) from None
        addresses = []
        for info in infos:
            addr = ipaddress.ip_address(info[4][0].split("%")[0])
            if addr not in addresses:
                addresses.append(addr)
        if not addresses:
            raise SourceError(uri, f"host {host!r} has no address", retryable=True)
    if not settings.allow_private_hosts:
        for addr in addresses:
            why = refused_reason(addr)
            if why is not None:
                raise SourceError(
                    uri,
                    f"refused: host {host!r} resolves to {addr}, {why}; "
                    "set CLASP_ALLOW_PRIVATE_HOSTS=true to allow internal hosts",
                )
    return str(addresses[0])


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every read and write is cut at one overall deadline."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: float):
        self._stream = stream
        self._deadline = deadline

    def _left(self, timeout: float | None, exc: type[Exception]) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise exc("overall deadline reached")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):  # noqa: ANN001
        tls = self._stream.start_tls(ssl_context, server_hostname, self._left(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(tls, self._deadline)

    def get_extra_info(self, info: str):  # noqa: ANN201
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's sync backend with one deadline over connect, TLS, request, headers and body.

    httpx's timeouts apply per socket operation, so a server trickling its status
    line or headers one byte a second holds a read for ever (measured: 60 s with a
    5 s timeout). Clamping every socket operation to the time left makes
    `http_timeout_s` a total deadline; httpx has no option for this.
    """

    def __init__(self, deadline: float):
        self._backend = httpcore.SyncBackend()
        self._deadline = deadline

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):  # noqa: ANN001
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ConnectTimeout("overall deadline reached")
        timeout = left if timeout is None else min(timeout, left)
        stream = self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):  # noqa: ANN001
        raise httpcore.ConnectError("unix sockets are not image sources")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _deadline_transport(deadline: float) -> httpx.HTTPTransport:
    transport = httpx.HTTPTransport(trust_env=False)
    # httpx.HTTPTransport takes no network backend: its pool is replaced by the same
    # httpcore pool built with the deadline backend (public httpcore API).
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        network_backend=_DeadlineBackend(deadline),
    )
    return transport


class HttpSource:
    """http(s) with timeout, size cap, content-type check and host policy (module docstring)."""

    def read(self, uri: str, settings: Settings) -> bytes:
        timeout_s = float(settings.http_timeout_s)
        deadline = time.monotonic() + timeout_s
        url = uri
        try:
            first = httpx.URL(url)
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise SourceError(uri, f"invalid URL: {exc}") from None
        if first.host:  # refuse before any client or connection exists
            resolve_allowed(uri, first.host, first.port or (443 if first.scheme == "https" else 80), settings)
        try:
            with httpx.Client(
                follow_redirects=False,
                trust_env=False,
                headers={"User-Agent": USER_AGENT},
                transport=_deadline_transport(deadline),
            ) as client:
                for _hop in range(MAX_REDIRECTS + 1):
                    result = self._get(client, uri, url, settings, deadline)
                    if isinstance(result, bytes):
                        return result
                    url = result  # a redirect, checked again on the next hop
                raise SourceError(uri, f"more than {MAX_REDIRECTS} redirects")
        except SourceError:
            raise
        except httpx.TimeoutException:
            raise SourceError(uri, f"timed out after {timeout_s:g} s (http_timeout_s)", retryable=True) from None
        except httpx.HTTPError as exc:
            raise SourceError(uri, f"HTTP request failed: {type(exc).__name__}: {exc}", retryable=True) from None

    def _get(self, client: httpx.Client, uri: str, url: str, settings: Settings, deadline: float) -> bytes | str:
        target = httpx.URL(url)
        if target.scheme not in ("http", "https"):
            raise SourceError(uri, f"redirected to a {target.scheme!r} URL; only http(s) is followed")
        if not target.host:
            raise SourceError(uri, "URL has no host")
        port = target.port or (443 if target.scheme == "https" else 80)
        address = resolve_allowed(uri, target.host, port, settings)
        pinned = target.copy_with(host=address)
        host_header = target.host if target.port is None else f"{target.host}:{target.port}"
        if ":" in target.host and not target.host.startswith("["):
            host_header = f"[{target.host}]" if target.port is None else f"[{target.host}]:{target.port}"
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise httpx.TimeoutException("deadline")
        cap = settings.max_download_bytes
        with client.stream(
            "GET",
            pinned,
            headers={"Host": host_header},
            extensions=extensions,
            timeout=httpx.Timeout(remaining),
        ) as resp:
            if resp.is_redirect:
                location = resp.headers.get("location")
                if not location:
                    raise SourceError(uri, f"HTTP {resp.status_code} redirect without a Location")
                return str(target.join(location))
            if resp.status_code >= 400:
                retryable = resp.status_code in (408, 425, 429) or resp.status_code >= 500
                raise SourceError(uri, f"HTTP {resp.status_code} {resp.reason_phrase}".strip(), retryable=retryable)
            if resp.status_code != 200:
                raise SourceError(uri, f"unexpected HTTP {resp.status_code} {resp.reason_phrase}".strip())
            ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
            if not (ctype.startswith("image/") or ctype in GENERIC_BINARY_TYPES):
                raise SourceError(uri, f"content type is {ctype or 'missing'!r}, not an image")
            length = resp.headers.get("content-length")
            if length and length.isdigit() and int(length) > cap:
                raise SourceError(uri, f"download is {_mb(int(length))}, over the {_mb(cap)} cap (max_download_bytes)")
            buf = bytearray()
            for chunk in resp.iter_bytes():
                buf += chunk
                if len(buf) > cap:
                    raise SourceError(uri, f"download exceeds the {_mb(cap)} cap (max_download_bytes)")
                if time.monotonic() > deadline:
                    raise httpx.TimeoutException("deadline")
            return bytes(buf)


# --------------------------------------------------------------------------- fsspec (optional)


# Network policy for fsspec URIs. fsspec reaches hosts through many protocols and
# chains them (`simplecache::ftp://h/x`, `zip://a.jpg::http://h/a.zip`); every link
# of a chain is classified before fsspec sees the URL:
# - no network of their own: local files, memory, data URLs, and wrappers (caches,
#   archives) whose target is the next link;
# - a host CLASP can check and pin: the host is resolved, refused by the same policy
#   as http(s), and the link is rewritten to the checked address (no DNS rebinding);
# - anything else (object stores whose endpoint comes from the environment, webhdfs
#   which redirects to data nodes, http(s) inside a chain which fsspec's client
#   redirects without our check, references, ...) cannot be checked: refused unless
#   listed in `allowed_schemes` (CLASP_ALLOWED_SCHEMES, comma-separated). An allowed
#   scheme's host, where the URL names one, still obeys the host policy.
LOCAL_PROTOCOLS = frozenset({"file", "local", "memory", "data"})
WRAPPER_PROTOCOLS = frozenset({"simplecache", "filecache", "blockcache", "cached", "zip", "tar", "libarchive"})
PINNED_HOST_PROTOCOLS = frozenset({"ftp", "sftp", "ssh", "smb"})


def allowed_schemes(settings: Settings) -> frozenset[str]:
    """Schemes allowed explicitly although their target cannot be checked.

    `settings.allowed_schemes` (CLASP_ALLOWED_SCHEMES, comma-separated, e.g. "s3,gs").
    """
    value = settings.allowed_schemes
    if isinstance(value, str):
        value = value.split(",")
    return frozenset(str(v).strip().lower() for v in value if str(v).strip())


def split_chain(uri: str) -> list[str]:
    """The links of an fsspec URL, outermost first, split exactly as fsspec.core._un_chain does."""
    if "::" not in uri:
        return [uri]
    from fsspec.registry import available_protocols

    known = set(available_protocols())
    not_a_word = re.compile(".*[^a-z]+.*")
    links = []
    for part in uri.split("::"):
        if part in known:
            links.append(part + "://")
        elif "://" in part or not_a_word.match(part):
            links.append(part)
        else:
            links.append(part + "://")
    return links


def _link_host(link: str) -> tuple[str | None, int | None]:
    from fsspec.utils import infer_storage_options

    try:
        opts = infer_storage_options(link)
    except Exception:  # noqa: BLE001 - an unparsable link is refused by the caller
        return None, None
    return opts.get("host") or None, opts.get("port")


def _pin(link: str, address: str) -> str:
    """`link` with its host replaced by the checked address (user, port and path kept)."""
    parts = urllib.parse.urlsplit(link)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    port = f":{parts.port}" if parts.port is not None else ""
    host = f"[{address}]" if ":" in address else address
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}{port}"))


def checked_fsspec_uri(uri: str, settings: Settings) -> str:
    """Apply the network policy to every link of an fsspec URI; return the URI to open (hosts pinned).

    Raises a permanent SourceError (never retried) for a refused link.
    """
    from fsspec.core import split_protocol
    from fsspec.registry import available_protocols

    allowed = allowed_schemes(settings)
    known = set(available_protocols())
    links = split_chain(uri)
    parts = uri.split("::") if len(links) > 1 else [uri]  # the original text of each link
    out = []
    for link, part in zip(links, parts, strict=True):
        protocol = (split_protocol(link)[0] or "file").lower()
        if protocol not in known:
            raise SourceError(uri, f"no fsspec filesystem for the {protocol}:// scheme in {link!r}")
        if protocol in LOCAL_PROTOCOLS or protocol in WRAPPER_PROTOCOLS:
            out.append(part)
            continue
        host, port = _link_host(link)
        if protocol in PINNED_HOST_PROTOCOLS:
            if not host:
                raise SourceError(uri, f"{protocol}:// link {link!r} names no host; refused")
            address = resolve_allowed(uri, host, int(port or 0), settings)
            out.append(_pin(link, address))
            continue
        if protocol not in allowed:
            raise SourceError(
                uri,
                f"refused: the {protocol}:// scheme can reach hosts CLASP cannot check; "
                f"add it to CLASP_ALLOWED_SCHEMES (e.g. CLASP_ALLOWED_SCHEMES={protocol}) to allow it",
            )
        if host:  # allowed explicitly: a host the URL names still obeys the host policy
            resolve_allowed(uri, host, int(port or 0), settings)
        out.append(part)
    return "::".join(out)


class FsspecSource:
    """Object stores and other filesystems through fsspec (optional extra), behind the network policy."""

    def read(self, uri: str, settings: Settings) -> bytes:
        try:
            import fsspec
        except ImportError:
            raise SourceError(uri, "reading this URI needs fsspec: pip install 'clasp[fsspec]'") from None
        cap = settings.max_download_bytes
        try:
            target = checked_fsspec_uri(uri, settings)
            fs, path = fsspec.core.url_to_fs(target)
            try:
                size = fs.size(path)
            except (NotImplementedError, AttributeError):
                size = None
            if size is not None and size > cap:
                raise SourceError(uri, f"object is {_mb(size)}, over the {_mb(cap)} cap (max_download_bytes)")
            with fs.open(path, "rb") as f:
                data = f.read(cap + 1)
        except SourceError:
            raise
        except ImportError as exc:
            raise SourceError(uri, f"no fsspec filesystem for this URI: {exc}") from None
        except ValueError as exc:
            raise SourceError(uri, f"unsupported URI: {exc}") from None
        except FileNotFoundError:
            raise SourceError(uri, "object not found") from None
        except IsADirectoryError:
            raise SourceError(uri, "is a directory, not an image file") from None
        except PermissionError:
            raise SourceError(uri, "permission denied") from None
        except Exception as exc:  # noqa: BLE001 - any store error fails this image only
            raise SourceError(uri, f"cannot read: {type(exc).__name__}: {exc}", retryable=True) from None
        if len(data) > cap:
            raise SourceError(uri, f"object is over the {_mb(cap)} cap (max_download_bytes)")
        return data


# --------------------------------------------------------------------------- entry points

_LOCAL = LocalSource()
_HTTP = HttpSource()
_FSSPEC = FsspecSource()


def scheme_of(uri: str) -> str:
    if len(uri) >= 2 and uri[1] == ":" and uri[0].isalpha():  # a Windows drive, not a scheme
        return ""
    head, sep, _ = uri.partition("://")
    if sep and "::" in head:  # a chained fsspec URL (`simplecache::ftp://...`): its outer link
        head = head.split("::", 1)[0]
    return head.lower() if sep and head.replace("+", "").replace("-", "").replace(".", "").isalnum() else ""


def source_for(uri: str) -> ImageSource:
    scheme = scheme_of(uri) or ("file" if uri.startswith("file:") else "")
    if scheme in ("", "file"):
        return _LOCAL
    if scheme in ("http", "https"):
        return _HTTP
    return _FSSPEC


def read_image_bytes(uri: str, settings: Settings | None = None) -> bytes:
    """The bytes behind `uri` (path, file://, http(s)://, or an fsspec URI). Raises SourceError."""
    settings = settings or Settings()
    if not uri or not str(uri).strip():
        raise SourceError(str(uri), "empty URI")
    return source_for(str(uri)).read(str(uri), settings)


@dataclass(frozen=True)
class FetchedImage:
    uri: str
    data: bytes
    sha256: str
    width: int
    height: int
    image: np.ndarray | None  # (H, W, 3) uint8 RGB from clasp_engine.images.load_image

    @property
    def size(self) -> int:
        return len(self.data)


def max_batch_pixels(settings: Settings) -> int:
    """Decoded pixels one worker batch may hold (3 bytes each as RGB).

    `settings.max_batch_pixels` (CLASP_MAX_BATCH_PIXELS, default 150 million: 450 MB
    of RGB; safe on a 24 GB machine with the engine's working copies). A batch always takes at least one
    image; the rest of a batch over the budget is given back to the queue.
    """
    return int(settings.max_batch_pixels)


def check_image(uri: str, data: bytes, settings: Settings) -> np.ndarray:
    """Decode `data` fully (truncation, non-images, pixel cap against decompression bombs)."""
    from clasp_engine.images import load_image

    try:
        return load_image(data, max_pixels=settings.max_image_pixels, name=uri)
    except InvalidImageError as exc:
        raise SourceError(uri, exc.reason) from None
    except Exception as exc:  # noqa: BLE001 - a decoder bug fails this image only
        raise SourceError(uri, f"cannot decode: {type(exc).__name__}: {exc}") from None


def fetch_image(uri: str, settings: Settings | None = None, *, keep_image: bool = True) -> FetchedImage:
    """Read, hash and decode-check one image. Raises SourceError with the reason."""
    settings = settings or Settings()
    data = read_image_bytes(uri, settings)
    image = check_image(uri, data, settings)
    h, w = image.shape[:2]
    return FetchedImage(
        uri=uri,
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        width=int(w),
        height=int(h),
        image=image if keep_image else None,
    )


def normalize_uri(uri: str) -> str:
    """Local paths become absolute (so the database names the same file from any directory);
    a name that is not UTF-8 becomes a percent-encoded file:// URI (`text_uri`)."""
    if scheme_of(uri) or uri.startswith("file:"):
        return uri
    return text_uri(os.path.abspath(os.path.expanduser(uri)))

"""A reviewer opens a pushed task in headless Chromium and sees the proposal regions over the image.

Chromium is Debian's `chromium` package (installed with apt-get when missing; no
browser download). It is driven over the DevTools protocol with `websockets`
(already a dependency through prefect): set the session cookie of a login, open
the task, capture a screenshot, check its pixels. The screenshots are kept in
test-artifacts/: label_studio_review.png (a synthetic two-colour image, one region),
label_studio_review_sample.png (a bundled sample photo segmented by the real
engine, every proposal region drawn over it in one colour), label_studio_review_grid.png
(six touching regions on a grey image: every region's overlay colour is read back
and must be its label's palette colour, so touching regions differ) and
label_studio_review_colours.png (the sample photo as a reviewer sees it by default:
touching proposals in different colours).
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage

from integrations.label_studio.client import LabelStudioClient
from integrations.label_studio.config import LabelingConfig
from integrations.label_studio.images import ImageResolver
from integrations.label_studio.predictions import RegionPolicy
from integrations.label_studio.push import PushItem, push_segmentations

pytestmark = [pytest.mark.browser, pytest.mark.label_studio, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[1]
from conftest import DOCUMENT_ROOT  # noqa: E402  (the folder Label Studio serves local files from)
IMAGE_RGB = (20, 110, 50)  # a dark green no part of the UI uses
W, H = 480, 320


@pytest.fixture(scope="session")
def chromium() -> str:
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if exe is None and shutil.which("apt-get"):
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True)
        exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("needs Debian's chromium package (apt-get install chromium)")
    return exe


class CDP:
    """The few DevTools protocol calls the test needs, over one websocket."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=64 * 1024 * 1024, open_timeout=20)
        self.ids = itertools.count(1)

    def call(self, method: str, timeout: float = 60, **params):
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expr: str):
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True).get("result", {}).get("value")

    def close(self):
        self.ws.close()


def start_chromium(exe: str, profile: str) -> subprocess.Popen:
    return subprocess.Popen(
        [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--no-default-browser-check", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", f"--window-size=1400,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def devtools_page(profile: str, proc: subprocess.Popen, timeout: float = 30) -> str:
    port_file = Path(profile) / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("chromium did not start its DevTools endpoint")
        time.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    while time.monotonic() < deadline:
        try:
            pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise RuntimeError("no page target in chromium")


def session_cookies(server) -> dict[str, str]:
    creds = server.credentials()
    with httpx.Client() as h:
        h.get(f"{server.url}/user/login/")
        h.post(f"{server.url}/user/login/",
               data={"email": creds.username, "password": creds.password, "csrfmiddlewaretoken": h.cookies.get("csrftoken")},
               headers={"Referer": f"{server.url}/user/login/"})
        cookies = {k: v for k, v in h.cookies.items()}
    assert "sessionid" in cookies, "login failed"
    return cookies


def open_task_screenshot(server, chromium: str, project_id: int, task_id: int, out: Path, ready,
                         timeout: float = 90, probe: str | None = None):
    """Log in, open the task in the editor, screenshot until `ready(pixels)`; keep the last one in `out`.

    Returns the value of the JavaScript expression `probe` evaluated on the final page (or None).
    """
    creds = server.credentials()
    cookies = session_cookies(server)
    profile = tempfile.mkdtemp(prefix="clasp-chromium-")
    proc = start_chromium(chromium, profile)
    probed = None
    try:
        cdp = CDP(devtools_page(profile, proc))
        for name, value in cookies.items():
            cdp.call("Network.setCookie", name=name, value=value, url=creds.url)
        cdp.call("Page.enable")
        cdp.call("Page.navigate", url=f"{creds.url}/projects/{project_id}/data?task={task_id}")
        deadline = time.monotonic() + timeout
        shot = None
        while time.monotonic() < deadline:
            time.sleep(2)
            png = base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"])
            px = np.asarray(PILImage.open(io.BytesIO(png)).convert("RGB"))
            if ready(px):
                time.sleep(1.5)  # let the editor settle, then take the one we keep
                png = base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"])
                shot = png
                break
            shot = png
        out.write_bytes(shot or b"")
        if probe:
            probed = cdp.eval(probe)
        cdp.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)
    return probed


def tinted(px: np.ndarray) -> np.ndarray:
    """Pixels where the magenta `region` colour is blended over the green image."""
    r, g, b = (px[..., i].astype(int) for i in range(3))
    return (r > g + 40) & (b > g + 40)


def green(px: np.ndarray) -> np.ndarray:
    r, g, b = (px[..., i].astype(int) for i in range(3))
    return (abs(r - IMAGE_RGB[0]) < 25) & (abs(g - IMAGE_RGB[1]) < 25) & (abs(b - IMAGE_RGB[2]) < 25)


def test_reviewer_sees_proposals_over_the_image(label_studio_server, chromium, artifacts_dir):
    # an image with two segments; only the left one (2/3 of the width) is proposed
    img_path = artifacts_dir / "browser-test-image.png"
    PILImage.new("RGB", (W, H), IMAGE_RGB).save(img_path)
    labels = np.zeros((H, W), np.int32)
    labels[:, 2 * W // 3 :] = 1
    creds = label_studio_server.credentials()
    with LabelStudioClient(creds.url, creds.token()) as ls:
        project = ls.find_or_create_project("CLASP browser test", LabelingConfig().xml())
        r = push_segmentations(
            ls, project, [PushItem(1, str(img_path), labels, "browser-test")],
            policy=RegionPolicy(max_regions=1, small="drop"),
            resolver=ImageResolver(mode="local-files", document_root=DOCUMENT_ROOT),
        )
        assert r.ok and r.image_modes == {"local-files": 1}
        task_id = (r.sent or r.existing)[0].task_id

    open_task_screenshot(
        label_studio_server, chromium, project.id, task_id, artifacts_dir / "label_studio_review.png",
        ready=lambda px: tinted(px).sum() > 2000 and green(px).sum() > 500,
    )

    px = np.asarray(PILImage.open(artifacts_dir / "label_studio_review.png").convert("RGB"))
    t, g = tinted(px), green(px)
    assert t.sum() > 2000, f"no proposal region drawn (tinted pixels: {t.sum()}); see {artifacts_dir / 'label_studio_review.png'}"
    assert g.sum() > 500, "the image itself is not visible"
    # the drawn region is the left 2/3 of the image: tinted columns lie left of the plain-green ones
    # (only the editor's canvas: rows where the region is drawn, columns from its left edge on;
    # the data manager's thumbnail of the image sits further left)
    rows = np.flatnonzero(t.sum(1) > 20)
    tc = np.flatnonzero(t[rows].sum(0) > 20)
    g = g[rows]
    g[:, : tc.min()] = False
    gc = np.flatnonzero(g.sum(0) > 20)
    assert tc.size and gc.size and np.median(tc) < np.median(gc)
    width_t, width_g = tc.max() - tc.min() + 1, gc.max() - gc.min() + 1
    assert 1.4 < width_t / width_g < 2.8, (width_t, width_g)  # 2/3 vs 1/3 of the displayed image


# Here every proposal region carries the single neutral label `region` (palette=():
# the taxonomy's magenta), so all regions of a task have the same colour in the editor:
# the check is that they cover the photo (a partition of the image), with the photo
# visible under them, and that the editor's Regions panel lists every one of them.
# The coloured default is checked by the two tests after this one.
REGIONS_IN_EDITOR = "document.querySelectorAll('[class*=\"node_type_brushregion\"]').length"


def test_reviewer_sees_engine_proposals_over_a_sample_photo(label_studio_server, chromium, artifacts_dir):
    from clasp_engine import Segmenter, SegmenterConfig
    from integrations.samples import sample_image_paths

    photo = next(p for p in sample_image_paths() if p.name == "grace_hopper.jpg")  # 5 segments (china.jpg: 2)
    photo = Path(shutil.copy(photo, artifacts_dir / photo.name))  # inside the server's local-files root
    seg = Segmenter(SegmenterConfig(backbone="classic", variant="pixel"))(str(photo))
    assert seg.k >= 3, f"the engine found only {seg.k} regions in {photo.name}"
    raw = np.asarray(PILImage.open(photo).convert("RGB"))
    assert raw.shape[:2] == seg.labels.shape
    assert tinted(raw).mean() < 0.02  # the photo itself has (almost) no magenta: the tint is the overlay

    creds = label_studio_server.credentials()
    with LabelStudioClient(creds.url, creds.token()) as ls:
        single = LabelingConfig(palette=())
        project = ls.find_or_create_project("CLASP browser test: sample photo", single.xml())
        r = push_segmentations(
            ls, project, [PushItem(2, str(photo), seg.labels, "browser-test-sample")], labeling=single,
            resolver=ImageResolver(mode="local-files", document_root=DOCUMENT_ROOT),
        )
        assert r.ok and r.image_modes == {"local-files": 1}, r.summary()
        assert r.summary()["regions"] == seg.k, r.summary()  # one brush region per segment
        task_id = (r.sent or r.existing)[0].task_id

    out = artifacts_dir / "label_studio_review_sample.png"
    n_items = open_task_screenshot(
        label_studio_server, chromium, project.id, task_id, out,
        ready=lambda px: tinted(px).sum() > 50_000, probe=REGIONS_IN_EDITOR,
    )

    px = np.asarray(PILImage.open(out).convert("RGB"))
    t = tinted(px)
    assert t.sum() > 50_000, f"no proposal regions drawn over the photo (tinted pixels: {t.sum()}); see {out}"
    # the editor's canvas: rows and columns where the overlay is substantial (the label
    # buttons and the data manager's untinted thumbnail fall outside)
    rows = np.flatnonzero(t.sum(1) > 0.3 * t.sum(1).max())
    cols = np.flatnonzero(t.sum(0) > 0.3 * t.sum(0).max())
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    h, w = bottom - top, right - left
    aspect, expected = w / h, raw.shape[1] / raw.shape[0]
    assert abs(aspect - expected) < 0.1 * expected, f"overlay box {w}x{h} is not the photo's shape ({raw.shape[1]}x{raw.shape[0]})"
    cover = t[top:bottom, left:right].mean()
    assert cover > 0.85, f"the regions cover only {cover:.0%} of the displayed photo; see {out}"
    # the photo is visible under the overlay: the displayed brightness follows the photo's
    shown = px[top:bottom, left:right].astype(float).mean(2)
    ref = np.asarray(PILImage.fromarray(raw).resize((w, h), PILImage.BILINEAR)).astype(float).mean(2)
    corr = np.corrcoef(shown.ravel(), ref.ravel())[0, 1]
    assert corr > 0.6, f"the displayed image does not look like {photo.name} (correlation {corr:.2f}); see {out}"
    assert n_items == seg.k, f"the editor lists {n_items} brush regions, the engine proposed {seg.k}; see {out}"
    print(f"overlay box {w}x{h}, covered {cover:.0%}, correlation with the photo {corr:.2f}, region items {n_items}")


GREY = (128, 128, 128)


def saturated(px: np.ndarray, min_chroma: int = 40) -> np.ndarray:
    """Pixels with a clear colour (the overlay over a grey image; the UI is white and grey)."""
    p = px.astype(int)
    return (p.max(2) - p.min(2)) > min_chroma


def screenshot_grid_cells(server, chromium: str, project_id: int, task_id: int, out: Path, aspect: float,
                          palette: list) -> tuple[tuple[int, int], list[tuple[np.ndarray, int]]]:
    """Screenshot the task, find the drawn overlay (it must have the image's aspect), and read the
    colour at the centre of each cell of its 2 x 3 grid: ((width, height), [(median RGB, palette index)])."""
    open_task_screenshot(server, chromium, project_id, task_id, out, ready=lambda px: saturated(px).sum() > 50_000)
    px = np.asarray(PILImage.open(out).convert("RGB"))
    top, bottom, left, right = overlay_box(saturated(px))
    h, w = bottom - top, right - left
    assert abs(w / h - aspect) < 0.1 * aspect, f"overlay box {w}x{h} is not the image's shape; see {out}"
    cells = []
    for cell in range(6):
        row, col = divmod(cell, 3)
        y0, y1 = top + int((row + 0.25) * h / 2), top + int((row + 0.75) * h / 2)
        x0, x1 = left + int((col + 0.25) * w / 3), left + int((col + 0.75) * w / 3)
        shown = np.median(px[y0:y1, x0:x1].reshape(-1, 3), axis=0)
        idx, _ = palette_of(shown[None, :], np.asarray(GREY)[None, :], palette)
        cells.append((shown, int(idx)))
    return (w, h), cells


def overlay_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """top, bottom, left, right of the region where the mask is dense (the editor's canvas)."""
    rows = np.flatnonzero(mask.sum(1) > 0.3 * mask.sum(1).max())
    cols = np.flatnonzero(mask.sum(0) > 0.3 * mask.sum(0).max())
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


def palette_of(shown: np.ndarray, under: np.ndarray, palette: list[tuple[int, int, int]]) -> tuple[int, float]:
    """Which palette colour, blended over `under` with one alpha, explains the `shown` pixels best.

    shown = (1 - a) * under + a * colour  =>  shown - under = a * (colour - under):
    fit a by least squares for every candidate and keep the smallest residual.
    """
    d = (shown.astype(float) - under.astype(float)).reshape(-1, 3)
    best, best_res = -1, np.inf
    for i, c in enumerate(palette):
        v = (np.asarray(c, float) - under.astype(float)).reshape(-1, 3)
        a = float((d * v).sum() / max((v * v).sum(), 1e-9))
        res = float(((d - a * v) ** 2).mean()) if 0.05 < a <= 1.0 else np.inf
        if res < best_res:
            best, best_res = i, res
    return best, best_res


def hex_rgb(h: str) -> tuple[int, int, int]:
    return tuple(int(h[i : i + 2], 16) for i in (1, 3, 5))


def test_touching_proposals_are_drawn_in_different_colours(label_studio_server, chromium, artifacts_dir):
    """Six touching regions (2 x 3 grid) over a plain grey image: read each one's overlay colour back."""
    gw, gh = 600, 400
    img_path = artifacts_dir / "browser-test-grid.png"
    PILImage.new("RGB", (gw, gh), GREY).save(img_path)
    labels = (np.arange(gh)[:, None] >= gh // 2).astype(np.int32) * 3 + np.minimum(np.arange(gw)[None, :] // (gw // 3), 2)
    cfg = LabelingConfig()
    creds = label_studio_server.credentials()
    with LabelStudioClient(creds.url, creds.token()) as ls:
        project = ls.find_or_create_project("CLASP browser test: colours", cfg.xml())
        r = push_segmentations(
            ls, project, [PushItem(3, str(img_path), labels, "browser-test-grid")],
            resolver=ImageResolver(mode="local-files", document_root=DOCUMENT_ROOT),
        )
        assert r.ok, r.summary()
        task_id = (r.sent or r.existing)[0].task_id
        pred = ls.task_predictions(task_id)[0]
    label_of = {int(x["id"].split("-")[1]): x["value"]["brushlabels"][0] for x in pred["result"]}
    touching = [(0, 1), (1, 2), (3, 4), (4, 5), (0, 3), (1, 4), (2, 5)]
    assert all(label_of[a] != label_of[b] for a, b in touching), label_of  # the push coloured them apart

    out = artifacts_dir / "label_studio_review_grid.png"
    palette = [hex_rgb(c) for c in cfg.palette]
    (w, h), cells = screenshot_grid_cells(label_studio_server, chromium, project.id, task_id, out, gw / gh, palette)
    seen: dict[int, int] = {}
    for cell, (shown, idx) in enumerate(cells):
        seen[cell] = idx
        expected = cfg.proposal_labels.index(label_of[cell])
        assert idx == expected, (
            f"region {cell} is drawn as {shown} ~ palette {idx}, its label {label_of[cell]} has palette {expected}; see {out}"
        )
    for a, b in touching:
        assert seen[a] != seen[b], f"touching regions {a} and {b} are drawn in the same colour; see {out}"
    print(f"overlay box {w}x{h}; palette index per region {seen}")


def test_reviewer_sees_coloured_engine_proposals(label_studio_server, chromium, artifacts_dir):
    """The default a reviewer gets: a sample photo's proposals, touching ones in different colours."""
    from clasp_engine import Segmenter, SegmenterConfig
    from integrations.label_studio.predictions import region_adjacency
    from integrations.samples import sample_image_paths

    photo = next(p for p in sample_image_paths() if p.name == "grace_hopper.jpg")
    photo = Path(shutil.copy(photo, artifacts_dir / photo.name))  # inside the server's local-files root
    seg = Segmenter(SegmenterConfig(backbone="classic", variant="pixel"))(str(photo))
    cfg = LabelingConfig()
    creds = label_studio_server.credentials()
    with LabelStudioClient(creds.url, creds.token()) as ls:
        project = ls.find_or_create_project("CLASP browser test: coloured sample", cfg.xml())
        r = push_segmentations(
            ls, project, [PushItem(4, str(photo), seg.labels, "browser-test-colours",
                                   confidences={s.label: s.confidence for s in seg.segments})],
            resolver=ImageResolver(mode="local-files", document_root=DOCUMENT_ROOT),
        )
        assert r.ok, r.summary()
        task_id = (r.sent or r.existing)[0].task_id
        pred = ls.task_predictions(task_id)[0]
    names = {int(x["id"].split("-")[1]): x["value"]["brushlabels"][0] for x in pred["result"]}
    adj = region_adjacency(seg.labels.astype(np.int64), seg.k)
    pairs = [(a, b) for a in range(seg.k) for b in range(a + 1, seg.k) if adj[a, b] > 0]
    assert pairs and all(names[a] != names[b] for a, b in pairs)
    assert len({x["score"] for x in pred["result"]}) > 1  # scores carry the engine's varying confidence

    out = artifacts_dir / "label_studio_review_colours.png"
    raw = np.asarray(PILImage.open(photo).convert("RGB"))
    n_items = open_task_screenshot(label_studio_server, chromium, project.id, task_id, out,
                                   ready=lambda px: saturated(px, 60).sum() > 30_000, probe=REGIONS_IN_EDITOR)
    assert n_items == seg.k, f"the editor lists {n_items} brush regions, the engine proposed {seg.k}; see {out}"
    # every displayed region is tinted by its own label's colour (fit against the photo under it)
    px = np.asarray(PILImage.open(out).convert("RGB"))
    top, bottom, left, right = overlay_box(saturated(px, 60))
    h, w = bottom - top, right - left
    shown = px[top:bottom, left:right]
    under = np.asarray(PILImage.fromarray(raw).resize((w, h), PILImage.BILINEAR))
    lab = np.asarray(PILImage.fromarray(seg.labels.astype(np.uint8)).resize((w, h), PILImage.NEAREST))
    palette = [hex_rgb(c) for c in cfg.palette]
    right_colour = 0
    for g, name in names.items():
        inner = lab == g
        if inner.sum() < 500:
            continue
        idx, _ = palette_of(shown[inner], under[inner], palette)
        right_colour += idx == cfg.proposal_labels.index(name)
    big = sum((lab == g).sum() >= 500 for g in names)
    assert right_colour == big, f"{right_colour} of {big} regions drawn in their label's colour; see {out}"
    print(f"{seg.k} regions, {len(pairs)} touching pairs, all in different colours; screenshot {out}")


def test_reviewer_sees_suggested_labels_from_past_reviews(label_studio_server, chromium, artifacts_dir, tmp_path):
    """A push from the database after reviews: regions like reviewed ones carry their taxonomy label
    (drawn in its colour), the others keep the coloured proposal labels."""
    from conftest_db import make_segmentation
    from sqlalchemy import select

    from integrations.db import ImageInput, add_images, claim_batch, start_run, store_segmentation
    from integrations.db.embeddings import embedding_model
    from integrations.db.models import ReviewLink
    from integrations.db.schema import upgrade
    from integrations.db.session import make_engine, make_session_factory
    from integrations.review.exemplars import insert_exemplars
    from integrations.review.push import push_unsent

    gw, gh = 600, 400
    img_path = artifacts_dir / "browser-test-suggestions.png"
    PILImage.new("RGB", (gw, gh), GREY).save(img_path)
    labels = (np.arange(gh)[:, None] >= gh // 2).astype(np.int32) * 3 + np.minimum(np.arange(gw)[None, :] // (gw // 3), 2)
    emb = np.eye(6, 16, dtype=np.float32)  # six orthogonal region embeddings
    seg = make_segmentation(gh, gw, 6, labels=labels)
    seg.diagnostics.backbone = "dino_vits8"
    seg.region_embeddings = emb
    url = f"sqlite:///{tmp_path / 'clasp.db'}"
    upgrade(url, "head")
    engine = make_engine(url)
    session = make_session_factory(engine)()
    try:
        add_images(session, [ImageInput(str(img_path), "ab" * 32, img_path.stat().st_size)])
        (claimed,) = claim_batch(session, "w", 1, lease_seconds=60)
        run = start_run(session, {"backbone": "dino_vits8"}, engine_version="0.1.0", backbone="dino_vits8")
        image_id = claimed.id if hasattr(claimed, "id") else claimed.image_id
        store_segmentation(session, image_id, run if isinstance(run, int) else run.id, seg, "w")
        # past reviews: regions like cell 0 were violence, like cell 5 drugs; nothing like the other cells
        insert_exemplars(session, ["violence"] * 4 + ["drugs"] * 4, emb[[0] * 4 + [5] * 4],
                         embedding_model(seg.diagnostics))
        cfg = LabelingConfig()
        creds = label_studio_server.credentials()
        with LabelStudioClient(creds.url, creds.token()) as ls:
            project = ls.find_or_create_project("CLASP browser test: suggestions", cfg.xml())
            r = push_unsent(session, ls, project, resolver=ImageResolver(mode="local-files", document_root=DOCUMENT_ROOT),
                            index_dir=tmp_path / "index")
            assert r.ok and len(r.sent) == 1, r.summary()
            task_id = r.sent[0].task_id
            pred = ls.task_predictions(task_id)[0]
            again = push_unsent(session, ls, project, resolver=ImageResolver(mode="local-files", document_root=DOCUMENT_ROOT),
                                index_dir=tmp_path / "index")
            assert not again.sent and len(ls.task_predictions(task_id)) == 1
        link = session.execute(select(ReviewLink)).scalar_one()
        assert link.model_version == pred["model_version"] and "+ex-" in pred["model_version"]
    finally:
        session.close()
        engine.dispose()
    label_of = {int(x["id"].split("-")[1]): x["value"]["brushlabels"][0] for x in pred["result"]}
    score_of = {int(x["id"].split("-")[1]): x.get("score") for x in pred["result"]}
    assert label_of[0] == "violence" and label_of[5] == "drugs", label_of
    assert all(label_of[c].startswith("region-") for c in (1, 2, 3, 4)), label_of
    assert pred["score"] == score_of[0] >= 0.9  # the task's risk: the highest non-safe confidence

    out = artifacts_dir / "label_studio_review_suggestions.png"
    colours = cfg.colours()
    names = [n for n in colours if n != cfg.neutral_label and colours[n].upper() != "#8E8E93"]  # grey: invisible on grey
    palette = [hex_rgb(colours[n]) for n in names]
    (w, h), cells = screenshot_grid_cells(label_studio_server, chromium, project.id, task_id, out, gw / gh, palette)
    seen = {cell: names[idx] for cell, (_, idx) in enumerate(cells)}
    assert seen == label_of, f"drawn colours {seen} differ from the pushed labels {label_of}; see {out}"
    print(f"overlay box {w}x{h}; drawn labels {seen}; task score {pred['score']}; screenshot {out}")

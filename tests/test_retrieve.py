"""The retrieve stage: icrawler's real crawlers against a server on 127.0.0.1, the checks every candidate passes,
the bundled library, choosing and normalising the reference image."""

import html
import io
import json
import random
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from icrawler.builtin.baidu import BaiduFeeder
from icrawler.builtin.bing import BingFeeder
from icrawler.builtin.google import GoogleFeeder
from icrawler.utils import Signal
from PIL import Image

from pipeline.retrieve import (
    ImageRecord,
    RetrievalError,
    RetrievalReport,
    RetrieveRequest,
    choose_references,
    normalise_reference,
    read_report,
    retrieve_images,
)
from pipeline.retrieve.bundled import read_library
from pipeline.retrieve.crawl import BaiduSearchFeeder, BingSearchFeeder, GoogleSearchFeeder

FAST = dict(queue_timeout_s=0.2, request_timeout_s=5, crawl_timeout_s=20)


# ---------------------------------------------------------------- test pictures


def _blobs(seed: int, size=(640, 400)) -> Image.Image:
    """A smooth random picture: different seeds give clearly different perceptual hashes."""
    cells = np.random.default_rng(seed).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    return Image.fromarray(cells).resize(size, Image.BICUBIC)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _huge_bilevel_png(side: int) -> bytes:
    """A valid 1-bit PNG of side×side pixels, all black: a few KB on disk, side² pixels once decoded."""
    row = bytes(1 + (side + 7) // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def _corrupt(png: bytes) -> bytes:
    """The PNG with one byte of its pixel data flipped: it still opens, but its checksum fails."""
    middle = bytearray(png)
    at = png.index(b"IDAT") + 40
    middle[at] ^= 0xFF
    return bytes(middle)


# How each bad file in `files` must be rejected (the start of its reason); the others must be accepted.
REJECTED_FOR = {
    "corrupt.jpg": "truncated or corrupt: broken PNG file",
    "truncated.jpg": "truncated or corrupt: image file is truncated",
    "tiny.jpg": "too small: 120x90 < 256",
    "huge.jpg": "too many pixels: 144000000 > 40000000",
    "text.jpg": "not an image",
    "copy.jpg": "duplicate of ",
    "near.jpg": "near-duplicate of ",
    "banner.jpg": "aspect 5 outside 0.33..3",
    "anim.jpg": "format GIF not allowed",
}


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    """Candidate files by name, all behind .jpg names (Bing's parser keeps nothing else): good ones and bad ones."""
    good1 = _encode(_blobs(1), "JPEG", quality=92)
    near = _encode(Image.open(io.BytesIO(good1)).resize((600, 375), Image.LANCZOS), "JPEG", quality=70)
    truncated = _encode(_blobs(3), "JPEG", quality=92)
    return {
        "good1.jpg": good1,
        "good2.jpg": _encode(_blobs(2, (800, 450)), "JPEG", quality=92),
        "good3.jpg": _encode(_blobs(4, (512, 512)), "PNG"),  # a PNG behind a .jpg link: fine
        "corrupt.jpg": _corrupt(_encode(_blobs(5), "PNG")),
        "truncated.jpg": truncated[: len(truncated) // 2],
        "tiny.jpg": _encode(_blobs(6, (120, 90)), "JPEG"),
        "huge.jpg": _huge_bilevel_png(12000),
        "text.jpg": b"<html><body>404 image not found</body></html>",
        "copy.jpg": good1,
        "near.jpg": near,
        "banner.jpg": _encode(_blobs(7, (1280, 256)), "JPEG"),
        "anim.jpg": _encode(_blobs(8, (400, 300)), "GIF"),
    }


def _by_file(report: RetrievalReport) -> dict[str, ImageRecord]:
    return {Path(urlsplit(record.source).path).name: record for record in report.candidates}


def _assert_judged(report: RetrievalReport, run_dir: Path, files: dict[str, bytes], extras: tuple[str, ...] = ()):
    """Exactly the good files are accepted and kept; every other file (but `extras`) is rejected for its own reason."""
    records = _by_file(report)
    assert set(records) == set(files) | set(extras)
    records = {name: records[name] for name in files}
    # Of two identical files the one that came first stays, so which one that is depends on the source's order.
    original, copy = sorted((records.pop("good1.jpg"), records.pop("copy.jpg")), key=lambda r: not r.accepted)
    assert original.accepted and copy.reason == f"duplicate of {original.name} (identical file)"
    for name, record in records.items():
        expected = REJECTED_FOR.get(name)
        if expected is None:
            assert record.accepted and record.reason is None, (name, record.reason)
        else:
            assert not record.accepted and record.reason.startswith(expected), (name, record.reason)
    assert records["near.jpg"].reason.startswith(f"near-duplicate of {original.name} (distance ")
    kept = sorted(p.name for p in (run_dir / "images").iterdir())
    assert kept == sorted([r.name for r in report.accepted] + ["meta.json"])
    assert read_report(run_dir / "images") == report


# ---------------------------------------------------------------- a web server on 127.0.0.1


def _bing_page(urls: list[str]) -> bytes:
    """A results page shaped like Bing's async image results: the parser reads `div.imgpt > a[m]` JSON with no
    spaces (its regex is `murl":"(.*?)\\.jpg`, so only .jpg links count)."""
    meta = [html.escape(json.dumps(dict(murl=u, turl=u), separators=(",", ":"))) for u in urls]
    items = "".join(f'<div class="imgpt"><a class="iusc" href="#" m="{m}"></a></div>' for m in meta)
    return f"<html><body>{items}</body></html>".encode()


@pytest.fixture(scope="module")
def requested() -> list[str]:
    """The paths (with queries) the test server was asked for."""
    return []


@pytest.fixture(scope="module")
def server(files, requested):
    """A ThreadingHTTPServer on 127.0.0.1 (any free port) serving the test files, search pages and a small site."""
    routes: dict[str, tuple[str, bytes]] = {f"/{name}": ("image/jpeg", data) for name, data in files.items()}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            requested.append(self.path)
            path = urlsplit(self.path).path
            # Only the first results page has results, as when a search runs out.
            first_page = "first=0" in self.path or "pn=0" in self.path or "start=0" in self.path
            if path in ("/images/async", "/search", "/acjson") and not first_page:
                path = "/empty"
            if path not in routes:
                self.send_error(404)
                return
            content_type, body = routes[path]
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # The pages link to the files by absolute URL, as search engines do: the port is known only now.
    base = f"http://127.0.0.1:{httpd.server_port}"
    links = [f"{base}/{name}" for name in files]
    half = len(links) // 2
    routes["/images/async"] = ("text/html", _bing_page(links))
    routes["/search"] = ("text/html", f"<script>var d={json.dumps(links)};</script>".encode())
    routes["/acjson"] = ("application/json", json.dumps({"data": [{"hoverURL": u} for u in links] + [{}]}).encode())
    imgs = "".join(f'<img src="{u}">' for u in links[:half])
    routes["/"] = ("text/html", f'<html><body>{imgs}<a href="/more.html">more</a></body></html>'.encode())
    routes["/more.html"] = ("text/html", "".join(f'<img src="{u}">' for u in links[half:]).encode())
    routes["/empty"] = ("text/html", b"<html><body>no pictures here</body></html>")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield base
    httpd.shutdown()
    httpd.server_close()


def _icrawler_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("feeder-", "parser-", "downloader-"))]


# ---------------------------------------------------------------- web sources


@pytest.mark.parametrize(
    ("ours", "icrawlers", "filters"),
    [
        (BingSearchFeeder, BingFeeder, {"license": "commercial,modify", "size": "large"}),
        (GoogleSearchFeeder, GoogleFeeder, {"license": "commercial"}),
        (BaiduSearchFeeder, BaiduFeeder, {"size": "large"}),
    ],
)
def test_search_feeders_default_to_the_real_engine(ours, icrawlers, filters):
    """Without a search address the feeders ask exactly what icrawler's own would (nothing is fetched here)."""
    pages = []
    for feeder_cls in (ours, icrawlers):
        feeder = feeder_cls(1, Signal(), None)
        feeder.feed(keyword="sunset", offset=0, max_num=40, filters=filters)
        pages.append([feeder.out_queue.get_nowait() for _ in range(feeder.out_queue.qsize())])
    assert pages[0] == pages[1] and pages[0][0].startswith(
        ("https://www.bing.com/", "https://www.google.com/", "http://image.baidu.com/")
    )


def test_bing_crawl_keeps_only_good_images(server, requested, files, tmp_path):
    """BingImageCrawler's own parser and downloader; only its search address points at the local server."""
    request = RetrieveRequest(
        keywords=["red ball"],
        source="bing",
        search_url=f"{server}/images/async?q={{}}&first={{}}",
        filters={"license": "commercial,modify"},
        downloader_threads=1,
        **FAST,
    )
    report = retrieve_images(request, tmp_path)
    assert "/images/async?q=red+ball&first=0&qft=+filterui:license-L2_L3" in requested
    _assert_judged(report, tmp_path, files)
    assert {r.source for r in report.accepted} == {f"{server}/good{i}.jpg" for i in (1, 2, 3)}
    good1 = _by_file(report)["good1.jpg"]
    assert (good1.width, good1.height, good1.format) == (640, 400, "JPEG")
    assert (tmp_path / "images" / good1.name).read_bytes() == files["good1.jpg"]


@pytest.mark.parametrize("engine", ["google", "baidu"])
def test_other_search_engines_take_a_search_address(server, tmp_path, engine):
    search_url = {"google": f"{server}/search?", "baidu": f"{server}/acjson?word={{}}&pn={{}}"}[engine]
    request = RetrieveRequest(keywords=["red ball"], source=engine, search_url=search_url, max_images=2, **FAST)
    report = retrieve_images(request, tmp_path)
    assert len(report.accepted) == 2
    assert all(r.source.startswith(server) for r in report.candidates)


def test_url_list_crawl(server, files, tmp_path):
    urls = [f"{server}/{name}" for name in files] + [f"{server}/missing.jpg"]
    report = retrieve_images(RetrieveRequest(keywords=["x"], source="urls", urls=urls, **FAST), tmp_path)
    missing = report.candidates[-1]
    assert missing.source == f"{server}/missing.jpg" and missing.name is None
    assert missing.reason.startswith("not downloaded")
    _assert_judged(report, tmp_path, files, extras=("missing.jpg",))


def test_greedy_crawl_follows_links_and_leaves_no_threads(server, files, tmp_path):
    report = retrieve_images(RetrieveRequest(keywords=["x"], source="greedy", site=server, **FAST), tmp_path)
    assert {Path(urlsplit(r.source).path).name for r in report.candidates} == set(files)
    assert len(report.accepted) == 3
    deadline = time.monotonic() + 3  # Greedy's feeder notices the stop signal after its 1 s sleep
    while _icrawler_threads() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _icrawler_threads() == []


def test_crawl_that_finds_nothing_ends_at_its_deadline(server, tmp_path):
    """icrawler's downloader waits for its first file forever; the crawl deadline ends it."""
    request = RetrieveRequest(keywords=["x"], source="greedy", site=f"{server}/empty", **{**FAST, "crawl_timeout_s": 1})
    started = time.monotonic()
    with pytest.raises(RetrievalError, match="found no candidate image.*--images DIR"):
        retrieve_images(request, tmp_path)
    assert time.monotonic() - started < 5
    assert read_report(tmp_path / "images").candidates == []


# ---------------------------------------------------------------- local sources


def test_folder_source_checks_every_file(files, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "bomb.png").write_bytes(_huge_bilevel_png(20000))  # beyond PIL's own limit: PIL refuses to open it
    report = retrieve_images(RetrieveRequest(keywords=["x"], source="folder", folder=folder), tmp_path / "run")
    bomb = _by_file(report)["bomb.png"]
    assert not bomb.accepted and bomb.reason.startswith("too many pixels: ")
    _assert_judged(report, tmp_path / "run", files, extras=("bomb.png",))
    assert [r.source for r in report.candidates] == sorted(r.source for r in report.candidates)


def test_a_second_retrieval_replaces_the_first(files, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(files["good1.jpg"])
    (folder / "b.jpg").write_bytes(files["good2.jpg"])
    retrieve_images(RetrieveRequest(keywords=["x"], source="folder", folder=folder), tmp_path / "run")
    (folder / "a.jpg").unlink()
    report = retrieve_images(RetrieveRequest(keywords=["x"], source="folder", folder=folder), tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "images").iterdir()) == ["img_0001.jpg", "meta.json"]
    assert report.accepted[0].source == str(folder / "b.jpg")
    assert not (tmp_path / "run" / "images.partial").exists()


def test_bundled_library_matches_tags(tmp_path):
    report = retrieve_images(RetrieveRequest(keywords=["Red balls", "green meadow"]), tmp_path / "a")
    assert Path(report.accepted[0].source).name == "red-ball.png" and report.note is None
    report = retrieve_images(RetrieveRequest(keywords=["lighthouse at night"]), tmp_path / "b")
    assert [Path(r.source).name for r in report.accepted] == ["lighthouse.png"]


def test_bundled_library_without_a_match_offers_everything(tmp_path):
    request = RetrieveRequest(keywords=["spaceship"])
    report = retrieve_images(request, tmp_path)
    names = [Path(r.source).name for r in report.accepted]
    # The whole library in its own order (the toy world's pictures first), as many as the request keeps.
    library = [Path(name).name for name in read_library()]
    # (A small toy on a plain background can be a near-duplicate of another: those are turned down as such.)
    rejected = [Path(r.source).name for r in report.rejected]
    assert all("duplicate" in r.reason for r in report.rejected)
    gathered = library[: request.max_images]
    assert names == [name for name in gathered if name not in rejected] and names[0] == library[0]
    assert "no bundled picture is tagged with any of" in report.note
    for record in report.accepted:
        assert (record.width, record.height) == (832, 480)
        assert (Path(record.source).stat().st_size) < 120_000


def test_exif_orientation_is_applied(tmp_path):
    """A phone photo stored landscape with 'rotate 90° clockwise' in its EXIF is measured and normalised upright."""
    stored = np.zeros((300, 400, 3), np.uint8)
    stored[:, :40] = (255, 0, 0)  # the stored left edge becomes the top once rotated
    exif = Image.Exif()
    exif[0x0112] = 6
    folder = tmp_path / "phone"
    folder.mkdir()
    Image.fromarray(stored).save(folder / "photo.jpg", exif=exif, quality=95)
    report = retrieve_images(RetrieveRequest(keywords=["x"], source="folder", folder=folder), tmp_path / "run")
    (record,) = report.accepted
    assert (record.width, record.height) == (300, 400)
    size = normalise_reference(tmp_path / "run" / "images" / record.name, tmp_path / "reference.png")
    assert size == (288, 400)
    upright = np.asarray(Image.open(tmp_path / "reference.png"))
    assert upright[:20, :, 0].mean() > 200 and upright[-100:, :, 0].mean() < 30


# ---------------------------------------------------------------- choosing and normalising


def _record(name: str, width: int, height: int) -> ImageRecord:
    return ImageRecord(name=name, source=name, sha256="0" * 64, width=width, height=height, accepted=True)


def test_choose_references_is_deterministic():
    records = [
        _record("portrait.jpg", 1080, 1920),
        _record("small.jpg", 640, 360),
        _record("square.jpg", 4000, 4000),
        _record("wide_b.jpg", 1920, 1080),
        _record("wide_a.jpg", 1920, 1080),
        _record("film.jpg", 832, 480),
        ImageRecord(name="bad.jpg", source="bad.jpg", accepted=False, reason="not an image"),
    ]
    expected = ["film.jpg", "wide_a.jpg", "wide_b.jpg", "square.jpg", "portrait.jpg", "small.jpg"]
    for seed in range(5):
        random.Random(seed).shuffle(records)
        report = RetrievalReport(source="folder", keywords=["x"], candidates=records)
        assert [r.name for r in choose_references(report, count=6)] == expected
    assert [r.name for r in choose_references(report)] == ["film.jpg"]
    assert [r.name for r in choose_references(report, count=8)] == expected + expected[:2]


@pytest.mark.parametrize(
    ("size", "mode", "expected", "max_width"),
    [
        ((1920, 1080), "fit", (832, 464), 832),
        ((1920, 1080), "crop", (832, 480), 832),
        ((600, 600), "crop", (832, 480), 832),
        ((640, 360), "fit", (640, 352), 832),
        ((1920, 1080), "fit", (320, 176), 320),
        ((600, 600), "crop", (320, 176), 320),
    ],
)
def test_normalise_reference_sizes(tmp_path, size, mode, expected, max_width):
    _blobs(9, size).save(tmp_path / "in.jpg")
    written_size = normalise_reference(tmp_path / "in.jpg", tmp_path / "reference.png", mode=mode, max_width=max_width)
    assert written_size == expected
    with Image.open(tmp_path / "reference.png") as written:
        assert (written.format, written.mode, written.size) == ("PNG", "RGB", expected)


# ---------------------------------------------------------------- errors that say what to do


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(keywords=[]), "keywords"),
        (dict(keywords=["  "]), "keyword is empty"),
        (dict(keywords=["x"], source="folder"), "needs folder="),
        (dict(keywords=["x"], source="greedy"), "needs site="),
        (dict(keywords=["x"], source="bing", filters={"license": "free"}), "license.*commercial,modify"),
        (dict(keywords=["x"], source="bing", filters={"mood": "happy"}), "unsupported filter 'mood'"),
        (dict(keywords=["x"], aspect_range=(3, 1)), "aspect_range"),
        (dict(keywords=["x"], source="urls", urls=["http://127.0.0.1/a.jpg"], search_url="http://x"), "search_url"),
        (dict(keywords=["x"], filters={"license": "commercial"}), "filters are for"),
    ],
)
def test_bad_requests_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        RetrieveRequest(**fields)


def test_unknown_normalise_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mode='stretch'.*'fit'.*'crop'"):
        normalise_reference(tmp_path / "in.jpg", tmp_path / "reference.png", mode="stretch")


def test_missing_folder_is_named(tmp_path):
    request = RetrieveRequest(keywords=["x"], source="folder", folder=tmp_path / "nope")
    with pytest.raises(RetrievalError, match=r"nope does not exist.*--images DIR"):
        retrieve_images(request, tmp_path / "run")


def test_flickr_needs_a_key(monkeypatch, tmp_path):
    monkeypatch.delenv("FLICKR_API_KEY", raising=False)
    with pytest.raises(RetrievalError, match="FLICKR_API_KEY"):
        retrieve_images(RetrieveRequest(keywords=["x"], source="flickr"), tmp_path)


def test_nothing_usable_lists_the_reasons(files, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in ("tiny.jpg", "text.jpg", "truncated.jpg"):
        (folder / name).write_bytes(files[name])
    (folder / "tiny2.jpg").write_bytes(_encode(_blobs(11, (100, 100)), "JPEG"))
    request = RetrieveRequest(keywords=["x"], source="folder", folder=folder)
    with pytest.raises(RetrievalError) as caught:
        retrieve_images(request, tmp_path / "run")
    message = str(caught.value)
    assert "none of the 4 candidate images" in message
    assert "2× too small, 1× not an image, 1× truncated or corrupt" in message
    assert "meta.json" in message and "--images DIR" in message
    assert len(read_report(tmp_path / "run" / "images").rejected) == 4

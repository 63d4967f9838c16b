"""Safe by default, checked: no code path loads pickles or runs text it was given; downloads are http(s) only and
size-capped; a web source that does not answer ends in one clear error; servers listen on 127.0.0.1 unless asked;
API keys never reach logs or the run folder."""

import ast
import io
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from pydantic import ValidationError

from flows.cli import main
from pipeline.retrieve import RetrievalError, RetrieveRequest, read_report, retrieve_images
from pipeline.retrieve import crawl as crawl_module
from pipeline.retrieve.crawl import CappedSession
from pipeline.retrieve.stage import NOT_DOWNLOADED

PRODUCT = [Path(__file__).parents[1] / folder for folder in ("pipeline", "flows", "svi_model", "prompts", "bench")]
FAST = dict(queue_timeout_s=0.2, request_timeout_s=0.5, crawl_timeout_s=20)
CAP = 2**20  # the download cap while these tests run (the real one, 50 MB, would make the test serve 50 MB)


def _unsafe_calls(tree: ast.AST) -> list[str]:
    """What in `tree` could run code hidden in data: pickle-family imports, eval/exec, yaml.load, torch.load
    without weights_only=True, trust_remote_code."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
            found += [f"import {n}" for n in names if n.split(".")[0] in ("pickle", "dill", "marshal", "shelve")]
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if func in ("eval", "exec") or func.endswith(("yaml.load", "yaml.unsafe_load")):
            found.append(f"{func}(…)")
        if func == "torch.load" and keywords.get("weights_only") != "True":
            found.append("torch.load without weights_only=True")
        if keywords.get("trust_remote_code") not in (None, "False"):
            found.append(f"{func}(trust_remote_code=…)")
    return found


def test_no_product_code_loads_pickles_or_runs_text():
    files = [path for folder in PRODUCT for path in folder.rglob("*.py")]
    assert len(files) > 50
    found = {str(path): _unsafe_calls(ast.parse(path.read_text(), str(path))) for path in files}
    assert {path: calls for path, calls in found.items() if calls} == {}
    # The scan does find each of them.
    planted = (
        "import pickle\neval(x)\ntorch.load(p)\nyaml.load(s)\nAutoModel.from_pretrained(p, trust_remote_code=True)"
    )
    assert len(_unsafe_calls(ast.parse(planted))) == 5


def _png(seed: int) -> bytes:
    cells = np.random.default_rng(seed).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(cells).resize((640, 400), Image.BICUBIC).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def web():
    """A server on 127.0.0.1: `/good.jpg` (a PNG), `/big.jpg` (over the cap, with its length), `/big-stream.jpg`
    (over the cap, no length: only counting the bytes finds it), `/slow.jpg` (answers after 3 s). Yields the base
    address and the list of paths asked for."""
    asked = []
    big = b"\xff\xd8\xff" + bytes(CAP + 1)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            if self.path == "/slow.jpg":
                time.sleep(3)
            body = {"/good.jpg": _png(1), "/slow.jpg": _png(2)}.get(self.path, big)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            if self.path != "/big-stream.jpg":  # HTTP/1.0: without a length the body ends when the connection does
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:  # the client hung up: what the cap is for
                pass

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}", asked
    httpd.shutdown()
    httpd.server_close()


def test_downloads_larger_than_the_cap_are_not_kept(web, tmp_path, monkeypatch, caplog):
    base, _ = web
    monkeypatch.setattr(crawl_module, "MAX_DOWNLOAD_BYTES", CAP)
    urls = [f"{base}/good.jpg", f"{base}/big.jpg", f"{base}/big-stream.jpg"]
    report = retrieve_images(RetrieveRequest(keywords=["x"], source="urls", urls=urls, **FAST), tmp_path)
    assert [(r.source, r.reason) for r in report.candidates] == [
        (f"{base}/good.jpg", None),
        (f"{base}/big.jpg", NOT_DOWNLOADED),
        (f"{base}/big-stream.jpg", NOT_DOWNLOADED),
    ]
    # Saved under a name of ours, with the suffix of what the bytes are (a PNG), whatever the address said.
    kept = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert len(kept) == 2 and kept[0].startswith("img_") and kept[0].endswith(".png") and kept[1] == "meta.json"
    warned = [r.getMessage() for r in caplog.records if "larger than" in r.getMessage()]
    assert sorted(warned) == sorted(f"not downloaded: {url} is larger than 1 MB" for url in urls[1:])


def test_only_http_and_https_are_fetched():
    with pytest.raises(ValidationError, match="URL scheme should be 'http' or 'https'"):
        RetrieveRequest(keywords=["x"], source="urls", urls=["file:///etc/passwd"])
    for address in ("file:///etc/passwd", "ftp://127.0.0.1/a.jpg"):  # e.g. where a redirect leads
        with pytest.raises(requests.exceptions.InvalidSchema, match="only http and https"):
            CappedSession(None).get(address)


def test_a_source_that_does_not_answer_is_tried_again_then_named(web, tmp_path):
    base, asked = web
    asked.clear()
    request = RetrieveRequest(keywords=["x"], source="urls", urls=[f"{base}/slow.jpg"], **FAST)
    started = time.monotonic()
    with pytest.raises(RetrievalError) as caught:
        retrieve_images(request, tmp_path)
    assert asked == ["/slow.jpg"] * 3  # icrawler's three tries, each cut at request_timeout_s
    assert time.monotonic() - started < 15  # bounded by the timeouts, not by the 9 s of answers
    message = str(caught.value)
    assert "none of the 1 candidate images" in message and "1× not downloaded" in message, message
    assert read_report(tmp_path / "images").candidates[0].reason == NOT_DOWNLOADED


def test_an_api_key_never_reaches_the_log_or_the_run_folder(tmp_path, monkeypatch, caplog):
    key = "k3y-that-must-not-leak"
    monkeypatch.setenv("FLICKR_API_KEY", key)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens there: every request fails at once
    caplog.set_level(logging.INFO)
    request = RetrieveRequest(keywords=["ball"], source="flickr", **FAST)
    with pytest.raises(RetrievalError) as caught:
        retrieve_images(request, tmp_path)
    # icrawler logged each failed request with its address, the key hidden.
    failures = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Exception caught when fetching")]
    assert failures and all("api_key=***" in message for message in failures)
    assert key not in caplog.text and key not in str(caught.value)
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or key.encode() not in path.read_bytes(), path
    assert key not in json.dumps(request.model_dump(mode="json"))


def test_svi_server_listens_on_this_machine_only_unless_asked(monkeypatch):
    started = []
    monkeypatch.setattr("os.execv", lambda path, argv: started.append(argv))
    monkeypatch.delenv("PREFECT_UI_API_URL", raising=False)
    main(["server"])
    main(["server", "--host", "0.0.0.0"])
    hosts = [argv[argv.index("--host") + 1] for argv in started]
    assert hosts == ["127.0.0.1", "0.0.0.0"]
    assert Path(started[0][0]).name == "prefect" and Path(started[0][0]).is_file()

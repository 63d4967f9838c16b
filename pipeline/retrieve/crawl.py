"""Candidate images from the web, through icrawler's own crawler classes, into a staging folder.

icrawler runs a feeder (search-result page addresses) → parser (image URLs) → downloader (files) pipeline of
threads. Four things are changed here, each for a reason:
- The search engines' feeders hard-code the engine's address; the subclasses below take it as a parameter (the
  default is the real address) so tests can serve result pages from 127.0.0.1.
- The downloader fetches over http(s) only and abandons a file past `MAX_DOWNLOAD_BYTES` mid-stream (icrawler reads
  any response whole into memory), and it keeps every other file it fetched: icrawler's own size check opens it
  with PIL, silently drops files PIL cannot identify (so nobody could say why) and lets `DecompressionBombError`
  kill the download thread.
  Every file is checked afterwards by `image_checks`, the same way for every source.
- icrawler logs every failed request with its full address, and Flickr's addresses carry the API key: its loggers
  hide the values of the sources' key variables (`KeysHidden`).
- The crawl is called through `Crawler.crawl` with short queue timeouts (icrawler's per-engine `crawl` methods fix
  them at 5 s, so a crawl that runs out of URLs idles for ~6 s), and under an overall deadline: Greedy's feeder
  never stops by itself, and a downloader that has fetched nothing waits for its parser forever.
"""

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote_plus, urlencode, urlsplit

import requests
from icrawler import Crawler, ImageDownloader
from icrawler.builtin import FlickrImageCrawler, GreedyImageCrawler, UrlListCrawler
from icrawler.builtin.baidu import BaiduFeeder
from icrawler.builtin.bing import BingFeeder
from icrawler.builtin.google import GoogleFeeder
from icrawler.utils import Session

from .request import IMAGE_SOURCES, RetrieveRequest

# The engines' own addresses, as icrawler 0.6.10 has them; `{}` placeholders take the keyword and the offset.
BING_URL = "https://www.bing.com/images/async?q={}&first={}"
GOOGLE_URL = "https://www.google.com/search?"
BAIDU_URL = "http://image.baidu.com/search/acjson?tn=resultjson_com&ipn=rj&word={}&pn={}&rn=30"

# Flickr serves each photo in several sizes; the largest ones are often far beyond what a 832-wide film needs
# (and beyond `max_pixels`), so "original" is not asked for.
FLICKR_SIZES = ["large 2048", "large 1600", "large", "medium 800", "medium 640", "medium", "small 320"]


class BingSearchFeeder(BingFeeder):
    """Bing's feeder with the search address as a parameter (one results page per 20 images)."""

    def __init__(self, thread_num, signal, session, search_url: str = BING_URL):
        super().__init__(thread_num, signal, session)
        self.search_url = search_url

    def feed(self, keyword, offset, max_num, filters=None):
        qft = self.get_filter().apply(filters)
        for first in range(offset, offset + max_num, 20):
            # icrawler puts the keyword in unquoted; quoting keeps "&" or "#" in a keyword from cutting the query.
            url = self.search_url.format(quote_plus(keyword), first)
            self.out_queue.put(url + ("&qft=" + qft if qft else ""))


class GoogleSearchFeeder(GoogleFeeder):
    """Google's feeder with the search address as a parameter (one results page per 100 images)."""

    def __init__(self, thread_num, signal, session, search_url: str = GOOGLE_URL):
        super().__init__(thread_num, signal, session)
        self.search_url = search_url

    def feed(self, keyword, offset, max_num, language=None, filters=None):
        tbs = self.get_filter().apply(filters, sep=",")
        for start in range(offset, offset + max_num, 100):
            params = dict(q=keyword, ijn=start // 100, start=start, tbs=tbs, tbm="isch")
            if language:
                params["lr"] = "lang_" + language
            self.out_queue.put(self.search_url + urlencode(params))


class BaiduSearchFeeder(BaiduFeeder):
    """Baidu's feeder with the search address as a parameter (one results page per 30 images)."""

    def __init__(self, thread_num, signal, session, search_url: str = BAIDU_URL):
        super().__init__(thread_num, signal, session)
        self.search_url = search_url

    def feed(self, keyword, offset, max_num, filters=None):
        extra = self.get_filter().apply(filters, sep="&")
        for start in range(offset, offset + max_num, 30):
            url = self.search_url.format(quote_plus(keyword), start)
            self.out_queue.put(url + ("&" + extra if extra else ""))


def search_filter_check(source: str, feeder_cls: type) -> Callable[[dict[str, str]], None]:
    """A check raising ValueError, naming the allowed values, if icrawler's filter table for the engine refuses
    the filters.

    Checked before crawling because inside the crawl the error would only kill the feeder thread, leaving an
    empty result and a traceback in the log.
    """

    def check(filters: dict[str, str]) -> None:
        # get_filter builds a fresh table and uses nothing of the feeder itself, so no feeder threads are needed.
        try:
            feeder_cls.get_filter(None).apply(filters)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source} search filters {filters}: {err.args[0]}") from None

    return check


class KeysHidden(logging.Filter):
    """Replaces, in every record of the logger it is on, the value of each environment variable an image source
    needs (its API key: `ImageSource.environment`) with `***`. Read when a record is made, so a key set late is
    hidden too."""

    def filter(self, record: logging.LogRecord) -> bool:
        variables = [IMAGE_SOURCES[name].environment for name in IMAGE_SOURCES]
        keys = [os.environ.get(variable[0]) for variable in variables if variable]
        message = record.getMessage()
        hidden = message
        for key in filter(None, keys):
            hidden = hidden.replace(key, "***")
        if hidden != message:
            record.msg, record.args = hidden, None
        return True


for _name in ("feeder", "parser", "downloader", "icrawler.crawler"):  # icrawler's loggers
    logging.getLogger(_name).addFilter(KeysHidden())


# No picture a film starts from is this large; a larger response is a mistake or an attack, and is not kept.
MAX_DOWNLOAD_BYTES = 50 * 2**20

log = logging.getLogger(__name__)


class CappedSession(Session):
    """icrawler's session for downloading files: http(s) addresses only, and a body larger than
    `MAX_DOWNLOAD_BYTES` is abandoned as it streams in (the response then says `too_large` and holds nothing)."""

    def get(self, url, **kwargs):
        if urlsplit(url).scheme not in ("http", "https"):
            raise requests.exceptions.InvalidSchema(f"{url}: only http and https addresses are downloaded")
        response = super().get(url, stream=True, **kwargs)
        response.too_large = int(response.headers.get("Content-Length") or 0) > MAX_DOWNLOAD_BYTES
        body = bytearray()
        for chunk in () if response.too_large else response.iter_content(1 << 16):
            body += chunk
            if len(body) > MAX_DOWNLOAD_BYTES:
                response.too_large = True
                break
        response.close()
        # What `response.content` returns from now on (requests reads the stream into this attribute itself).
        response._content = b"" if response.too_large else bytes(body)
        return response


class StagingDownloader(ImageDownloader):
    """icrawler's image downloader over a `CappedSession`, keeping every file it fetched and remembering each
    file's URL."""

    def __init__(self, thread_num, signal, session, storage):
        capped = CappedSession(session.proxy_pool)
        capped.headers.update(session.headers)
        super().__init__(thread_num, signal, capped, storage)
        self.sources: dict[str, str] = {}

    def keep_file(self, task, response, **kwargs):
        if response.too_large:
            log.warning("not downloaded: %s is larger than %d MB", task["file_url"], MAX_DOWNLOAD_BYTES // 2**20)
            return False
        # Every other file is judged afterwards by image_checks, the same way for every source (see the module notes).
        return True

    def process_meta(self, task):
        if task["success"]:
            with self.lock:
                self.sources[task["filename"]] = task["file_url"]


CrawlPlan = tuple[Crawler, dict, dict]
"""An icrawler crawler with the feeder and parser arguments its own `crawl` would pass."""


def _common(request: RetrieveRequest, staging: Path) -> dict:
    return dict(
        downloader_cls=StagingDownloader,
        downloader_threads=request.downloader_threads,
        storage={"backend": "FileSystem", "root_dir": str(staging)},
        log_level=logging.WARNING,
    )


def search_engine_crawl(crawler_cls: type[Crawler], feeder_cls: type) -> Callable[..., CrawlPlan]:
    """The crawl plan of a keyword search engine (Bing, Google, Baidu) whose address the request may override."""

    def plan(request: RetrieveRequest, staging: Path, max_num: int) -> CrawlPlan:
        engine_url = {"extra_feeder_args": {"search_url": request.search_url}} if request.search_url else {}
        crawler = crawler_cls(feeder_cls=feeder_cls, **engine_url, **_common(request, staging))
        keyword = " ".join(request.keywords)
        return crawler, dict(keyword=keyword, offset=0, max_num=max_num, filters=request.filters or None), {}

    return plan


def flickr_crawl(request: RetrieveRequest, staging: Path, max_num: int) -> CrawlPlan:
    apikey = os.environ["FLICKR_API_KEY"]
    crawler = FlickrImageCrawler(apikey=apikey, **_common(request, staging))
    search = {"text": " ".join(request.keywords), "sort": "relevance", **request.filters}
    return crawler, dict(apikey=apikey, **search), dict(apikey=apikey, size_preference=FLICKR_SIZES)


def greedy_crawl(request: RetrieveRequest, staging: Path, max_num: int) -> CrawlPlan:
    site = [str(request.site).rstrip("/")]
    return GreedyImageCrawler(**_common(request, staging)), dict(domains=site), dict(domains=site)


def url_list_crawl(request: RetrieveRequest, staging: Path, max_num: int) -> CrawlPlan:
    return UrlListCrawler(**_common(request, staging)), dict(url_list=[str(url) for url in request.urls]), {}


def crawl_candidates(
    plan: Callable[..., CrawlPlan], request: RetrieveRequest, staging: Path, max_num: int
) -> list[tuple[Path, str]]:
    """Fetch up to `max_num` files with the crawler `plan` makes into `staging`: (file, its URL), in download order."""
    staging.mkdir(parents=True, exist_ok=True)
    crawler, feeder_kwargs, parser_kwargs = plan(request, staging, max_num)
    timeouts = dict(queue_timeout=request.queue_timeout_s, req_timeout=request.request_timeout_s)
    crawl = threading.Thread(
        target=Crawler.crawl,
        args=(crawler,),
        kwargs=dict(
            feeder_kwargs=feeder_kwargs,
            parser_kwargs={**parser_kwargs, **timeouts},
            downloader_kwargs=dict(max_num=max_num, **timeouts),
        ),
        name="icrawler",
        daemon=True,
    )
    crawl.start()
    crawl.join(request.crawl_timeout_s)
    # Whether it finished or ran out of time: this signal is what makes icrawler's feeder, parser and downloader
    # threads leave their loops, so none is left waiting in a long-lived process (a Prefect worker).
    crawler.signal.set(reach_max_num=True)
    crawl.join()
    sources = crawler.downloader.sources
    return [(staging / name, sources[name]) for name in sorted(sources)]

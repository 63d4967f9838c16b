"""The built-in image sources, one row each in `IMAGE_SOURCES`: a new source is a module with its `gather`
function plus one row here (or one `IMAGE_SOURCES.register` call anywhere before the request is made).
"""

from pathlib import Path

from icrawler.builtin import BaiduImageCrawler, BingImageCrawler, GoogleImageCrawler

from .bundled import match_library
from .crawl import (
    BaiduSearchFeeder,
    BingSearchFeeder,
    GoogleSearchFeeder,
    crawl_candidates,
    flickr_crawl,
    greedy_crawl,
    search_engine_crawl,
    search_filter_check,
    url_list_crawl,
)
from .request import IMAGE_SOURCES, Candidates, ImageSource, RetrievalError, RetrieveRequest

# A web crawl fetches this many candidates per wanted image: thumbnails, broken links and duplicates are common.
CANDIDATES_PER_IMAGE = 3


def bundled_candidates(request: RetrieveRequest, staging: Path) -> tuple[Candidates, str | None]:
    """The bundled library's pictures tagged with the keywords, best first (all of them when none is)."""
    paths, matched = match_library(request.keywords)
    note = None if matched else f"no bundled picture is tagged with any of {request.keywords}: all are offered"
    return [(path, str(path)) for path in paths[: request.max_images]], note


def folder_candidates(request: RetrieveRequest, staging: Path) -> tuple[Candidates, str | None]:
    """Every file in the user's folder, by name."""
    folder = request.folder
    if not folder.is_dir():
        raise RetrievalError(
            f"image folder {folder} does not exist or is not a folder: give --images DIR, a folder holding the "
            "pictures to start from"
        )
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return [(path, str(path)) for path in files], None


def web_candidates(plan, per_request=lambda request: request.max_images * CANDIDATES_PER_IMAGE):
    """A `gather` that crawls with icrawler: `plan` makes the crawler, `per_request` says how many files to fetch."""

    def gather(request: RetrieveRequest, staging: Path) -> tuple[Candidates, str | None]:
        return crawl_candidates(plan, request, staging, per_request(request)), None

    return gather


def _search_engine(name: str, crawler_cls: type, feeder_cls: type, help: str) -> ImageSource:
    return ImageSource(
        gather=web_candidates(search_engine_crawl(crawler_cls, feeder_cls)),
        help=help,
        takes_search_url=True,
        check_filters=search_filter_check(name, feeder_cls),
    )


IMAGE_SOURCES.register("bundled", ImageSource(bundled_candidates, "the demo's tagged library, offline"))
IMAGE_SOURCES.register("bing", _search_engine("bing", BingImageCrawler, BingSearchFeeder, "Bing image search"))
IMAGE_SOURCES.register(
    "google", _search_engine("google", GoogleImageCrawler, GoogleSearchFeeder, "Google image search")
)
IMAGE_SOURCES.register("baidu", _search_engine("baidu", BaiduImageCrawler, BaiduSearchFeeder, "Baidu image search"))
IMAGE_SOURCES.register(
    "flickr",
    ImageSource(
        web_candidates(flickr_crawl),
        "Flickr search (FLICKR_API_KEY)",
        check_filters=lambda filters: None,  # Flickr's search parameters: the API itself judges them
        environment=("FLICKR_API_KEY", "get one at https://www.flickr.com/services/api/"),
    ),
)
IMAGE_SOURCES.register("greedy", ImageSource(web_candidates(greedy_crawl), "every picture on one site", needs="site"))
IMAGE_SOURCES.register(
    "urls",
    ImageSource(web_candidates(url_list_crawl, lambda request: len(request.urls)), "a list of addresses", needs="urls"),
)
IMAGE_SOURCES.register("folder", ImageSource(folder_candidates, "a folder of your own pictures", needs="folder"))

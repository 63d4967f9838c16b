"""The bundled picture library (`assets/images`): the offline default source, matched to keywords by tags.

`library.yaml` maps each picture's file name to the things it shows (a subfolder may hold a set with its own
`library.yaml`: `toyworld/` holds pictures of the toy world the demo model knows). A picture scores one point per
keyword word that is one of its tags (case-insensitive, plurals folded: "balls" finds "ball"); the best scores
come first, the library's own order breaks ties.
"""

import os
from pathlib import Path

import yaml

LIBRARY = Path(__file__).resolve().parents[2] / "assets" / "images"
LIBRARY_FILE = "library.yaml"


def singular(word: str) -> str:
    """A crude English singular, enough to match tags: berries → berry, boxes → box, balls → ball, grass stays."""
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ses", "xes", "zes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        return word[:-1]
    return word


def keyword_words(keywords: list[str]) -> set[str]:
    """The distinct words of the keywords, lower-case and singular ("Red balls" → {"red", "ball"})."""
    return {singular(word) for keyword in keywords for word in keyword.lower().replace(",", " ").split()}


def read_library(library: str | os.PathLike = LIBRARY) -> dict[str, list[str]]:
    """File name (relative to `library`) → tags: first each subfolder's own `library.yaml` (sorted by folder; the
    toy world's pictures, which the demo model was trained on, come first that way), then the folder's own, each
    in the order it lists them."""
    library = Path(library)
    parts = [(f"{folder.name}/", folder) for folder in sorted(library.iterdir()) if (folder / LIBRARY_FILE).is_file()]
    entries: dict[str, list[str]] = {}
    for prefix, folder in [*parts, ("", library)]:
        path = folder / LIBRARY_FILE
        listed = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(listed, dict) or not all(isinstance(tags, list) for tags in listed.values()):
            raise ValueError(f"{path} must map each image file name to a list of tags")
        entries |= {prefix + name: [str(tag) for tag in tags] for name, tags in listed.items()}
    return entries


def match_library(keywords: list[str], library: str | os.PathLike = LIBRARY) -> tuple[list[Path], bool]:
    """The library's pictures for `keywords`, best first, and whether any tag matched.

    Only pictures with at least one matching tag are returned; when none matches, the whole library in its own
    order, so the offline default always has a picture to start from.
    """
    words = keyword_words(keywords)
    entries = read_library(library)
    scores = {name: len(words & {singular(tag.lower()) for tag in tags}) for name, tags in entries.items()}
    order = list(entries)
    matched = sorted((name for name in order if scores[name]), key=lambda name: (-scores[name], order.index(name)))
    return [Path(library) / name for name in (matched or order)], bool(matched)

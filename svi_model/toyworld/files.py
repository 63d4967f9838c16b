"""Toy-world data on disk: training videos in the MixKit layout, and still pictures with a tags library.

Dataset, read by `svi_model.erft.dataset.read_video_index` (one category per motion):

    root/<motion>/<motion>.csv      columns Video Title, Video Description (= `caption(scene)`), Video URL,
                                    Download URL (both empty), Filename
    root/<motion>/<index>.mkv       the clips, lossless FFV1 (`video_files.write_clip`); index counts all clips
    root/scenes.jsonl               the ground truth, one line per clip in index order: {"file", "caption", "scene"}

Pictures, read by `pipeline.retrieve.bundled.read_library`:

    folder/<index>-<size>-<colour>-<shape>.png    frame 0 of a scene; its PNG Description is `state_caption`
    folder/library.yaml                           file name → tags (`captions.tags`)

Both are deterministic: scene i is the i-th `random_scene` drawn from `np.random.default_rng(seed)`, so the same
seed writes the same frames and the same text files.
"""

import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from tqdm.auto import tqdm

from ..video_files import write_clip
from .captions import caption, state_caption, tags
from .render import render_frames
from .scene import random_scene

MIXKIT_HEADER = ("Video Title", "Video Description", "Video URL", "Download URL", "Filename")
SCENES_FILE = "scenes.jsonl"
LIBRARY_FILE = "library.yaml"
# PNG's standard keyword for what a picture shows (`pipeline.retrieve.reference` reads it back).
DESCRIPTION_KEY = "Description"
# The pictures a retrieval by "red ball" must find: the project's default keywords.
RED_BALL = ({"colour": "red", "shape": "ball"},)


def _new_folder(folder: Path, count: int) -> None:
    """Refuse a count below 1, and a folder that already holds files (stale ones would mix into the new set)."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty: choose a new folder or delete it, then write again")
    folder.mkdir(parents=True, exist_ok=True)


def write_dataset(
    root: str | os.PathLike,
    count: int,
    seed: int,
    num_frames: int = 33,
    height: int = 64,
    width: int = 112,
    fps: float = 16,
    progress: bool = False,
) -> list[Path]:
    """Render `count` random clips of uint8 `[num_frames, height, width, 3]` into a new MixKit dataset at `root`.

    Returns the video paths in index order; `progress` shows a tqdm bar.
    """
    root = Path(root)
    _new_folder(root, count)
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng) for _ in range(count)]
    rows: dict[str, list[dict[str, str]]] = {}
    ground_truth, paths = [], []
    for index, scene in enumerate(tqdm(scenes, desc="clips", unit="clip", disable=not progress)):
        path = root / scene.motion / f"{index:05d}.mkv"
        write_clip(torch.from_numpy(render_frames(scene, num_frames, height, width)), path, fps)
        text = caption(scene)
        row = {"Video Title": f"toyworld {index:05d}", "Video Description": text, "Filename": path.name}
        rows.setdefault(scene.motion, []).append({"Video URL": "", "Download URL": "", **row})
        ground_truth.append({"file": path.relative_to(root).as_posix(), "caption": text, "scene": asdict(scene)})
        paths.append(path)
    for category, category_rows in sorted(rows.items()):
        # Unix line ends, like the project's other text files (the csv module's default is "\r\n").
        with open(root / category / f"{category}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=MIXKIT_HEADER, lineterminator="\n")
            writer.writeheader()
            writer.writerows(category_rows)
    lines = [json.dumps(entry, sort_keys=True) + "\n" for entry in ground_truth]
    (root / SCENES_FILE).write_text("".join(lines), encoding="utf-8")
    return paths


def write_pictures(
    folder: str | os.PathLike,
    count: int,
    seed: int,
    height: int = 480,
    width: int = 832,
    must_include: Sequence[Mapping[str, str]] = RED_BALL,
) -> list[Path]:
    """Render `count` random still pictures (PNG, height × width) and their `library.yaml` into a new `folder`.

    The first pictures keep the choices of `must_include` (`random_scene` keywords: colour, shape, size, pattern,
    ...), one picture each, the rest are drawn freely; by default picture 0 is a red ball. Returns the picture
    paths in index order, which is also the library's order.
    """
    folder = Path(folder)
    _new_folder(folder, count)
    rng = np.random.default_rng(seed)
    fixed = list(must_include)[:count] + [{}] * max(0, count - len(must_include))
    library, paths = {}, []
    for index, choices in enumerate(fixed):
        scene = random_scene(rng, **choices)
        toy = scene.toy
        path = folder / f"{index:03d}-{toy.size}-{toy.colour}-{toy.shape}.png"
        # The picture carries its caption (PNG's Description), so the template storyline can continue it.
        info = PngInfo()
        info.add_text(DESCRIPTION_KEY, state_caption(scene))
        Image.fromarray(render_frames(scene, 1, height, width)[0]).save(path, pnginfo=info)
        library[path.name] = tags(scene)
        paths.append(path)
    header = f"# Toy-world pictures ({height}x{width}, seed {seed}) and their tags: colour, shape, size, pattern.\n"
    body = yaml.safe_dump(library, sort_keys=False, default_flow_style=None, width=1000)
    (folder / LIBRARY_FILE).write_text(header + body, encoding="utf-8")
    return paths

import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Reusable work (clip store, Prefect results) goes to a throwaway folder, never the user's ~/.cache/svi-film.
os.environ["SVI_CACHE_DIR"] = tempfile.mkdtemp(prefix="svi-test-cache-")
# Films in tests render with tiny random weights (seconds), not the shipped demo model; tests of the demo model
# name its folder. Set here, so `svi` subprocesses inherit it.
os.environ["SVI_DEMO_MODEL"] = "random"

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import WanImageToVideoPipeline
from PIL import Image

from svi_model.sampler import ClipSampler
from svi_model.schedule import SVIFlowMatchScheduler
from svi_model.tiny import save_tiny_model, tiny_components


@pytest.fixture(scope="session")
def prefect_server():
    """One throwaway Prefect server and database for the whole session (starting one takes seconds)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="module")
def bench_folder() -> Path:
    """`bench/`, on the import path while a module's tests run, as it is for a script run from there (the bench
    scripts import their siblings)."""
    folder = Path(__file__).resolve().parents[1] / "bench"
    sys.path.insert(0, str(folder))
    try:
        yield folder
    finally:
        sys.path.remove(str(folder))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random Wan2.1-I2V model folder (diffusers layout, real classes), built once; tests only read it."""
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny-wan")


@pytest.fixture
def picture(tmp_path) -> Path:
    """A 48×32 picture of noise to start a film from."""
    path = tmp_path / "frame.png"
    Image.fromarray((np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_pipe() -> WanImageToVideoPipeline:
    """A tiny random Wan I2V pipeline (real classes) sampling on SVI's schedule."""
    components = tiny_components()
    components["scheduler"] = SVIFlowMatchScheduler()
    pipe = WanImageToVideoPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def sampler(tiny_pipe) -> ClipSampler:
    return ClipSampler(tiny_pipe)


@pytest.fixture(scope="session")
def reference() -> torch.Tensor:
    """A random uint8 reference frame [32, 48, 3] (sides multiples of 16)."""
    return torch.randint(0, 256, (32, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(7))


@pytest.fixture
def seeds(monkeypatch) -> list[int]:
    """The noise seed of every clip the model renders in this test, in order."""
    calls = []
    real = ClipSampler.render
    monkeypatch.setattr(ClipSampler, "render", lambda self, *a, **k: calls.append(a[1]) or real(self, *a, **k))
    return calls

"""Bad files in a request are found before anything starts or is written: no Prefect run, no request in the run
folder, so the corrected command is not refused as "another film"."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from filelock import FileLock
from PIL import Image
from prefect.settings import PREFECT_API_URL

import flows.film  # noqa: F401  (Prefect sets up its log handlers on import: on the real stderr, not a captured one)
from flows import cli
from flows.cli import main
from pipeline.run_folder import OWNER_FILE, RunFolder, RunFolderInUse
from svi_model.tiny import save_tiny_model

SMALL = ["--clips", "1", "--num-frames", "9", "--steps", "2", "--max-width", "128"]


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "frame.png"
    Image.fromarray((np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--images", "missing.png"], "image {here}/missing.png does not exist"),
        (["--prompts", "missing.txt"], "prompt file {here}/missing.txt does not exist"),
        (["--model", "no-model"], "model folder {here}/no-model does not exist"),
        (["--lora", "missing.safetensors"], "lora {here}/missing.safetensors does not exist"),
        (["--stacked-loras", "gone.safetensors:0.5"], "stacked LoRA gone.safetensors does not exist"),
        (["--backend", "qwen", "--qwen-model", "no-qwen"], "qwen_model {here}/no-qwen lacks the folder itself"),
    ],
)
def test_a_bad_file_is_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch, flags, expected):
    """Relative paths are named as the command line took them: from the working directory."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert main(["film", "--run-dir", str(run), *SMALL, *flags]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and expected.format(here=tmp_path) in error[0], error
    assert not run.exists()


@pytest.mark.usefixtures("prefect_server")
def test_the_corrected_command_is_not_another_film(tmp_path, picture, monkeypatch):
    monkeypatch.setenv("SVI_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["film", "--run-dir", str(run), *SMALL, "--images", str(tmp_path / "frame.jpg")]) == 2
    assert main(["film", "--run-dir", str(run), *SMALL, "--images", str(picture)]) == 0
    assert (run / "film.mp4").is_file()


def test_an_incomplete_model_folder_is_named_before_the_run(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "model")
    for part in (tmp_path / "model" / "vae").iterdir():
        part.unlink()
    assert main(["film", "--run-dir", str(tmp_path / "run"), *SMALL, "--model", model]) == 2
    assert "vae" in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "size, expected",
    [
        ((100, 10000), "10000x100 is too wide for its height: at 128 px wide it is 0 px tall"),
        ((1, 1), "1x1 is too small for a film"),
    ],
)
def test_a_picture_no_film_can_start_from_is_named_with_its_problem(tmp_path, capsys, size, expected):
    path = tmp_path / "odd.png"
    Image.fromarray(np.zeros((*size, 3), np.uint8)).save(path)
    assert main(["film", "--run-dir", str(tmp_path / "run"), *SMALL, "--images", str(path)]) == 2
    error = capsys.readouterr().err
    assert f"{path}: an image of {expected}" in error


def test_a_folder_given_as_a_picture_says_it_is_a_folder(tmp_path, capsys):
    assert main(["film", "--run-dir", str(tmp_path / "run"), *SMALL, "--images", str(tmp_path)]) == 2
    assert f"image {tmp_path} is a folder" in capsys.readouterr().err


def test_a_run_folder_another_run_holds_is_refused_at_once(tmp_path, picture, capsys):
    model = save_tiny_model(tmp_path / "model")
    prompts = tmp_path / "story.txt"
    prompts.write_text("a red ball rests on the grass\n")
    run = tmp_path / "film.clips"
    run.mkdir()
    args = ["generate", "--images", str(picture), "--prompts", str(prompts), "--model", model, "--device", "cpu",
            "--num-frames", "9", "--steps", "2", "--out", str(tmp_path / "film.mp4")]  # fmt: skip
    with FileLock(run / ".lock"):  # another run is rendering into it
        assert main(args) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error == f"error: {run} is in use by another run: wait for it to finish, or choose another --run-dir"
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    assert main(args) == 0  # once it is free


def test_a_second_attempt_of_the_same_run_waits_for_the_folder_and_another_run_does_not(tmp_path):
    """Prefect can start a flow run twice (a crash reported twice): the second attempt waits for the first to be
    done with the folder, where another run is refused at once."""
    folder, events = RunFolder(tmp_path / "run"), []
    held = threading.Event()

    def first_attempt():
        with folder.claimed(owner="run-1"):
            held.set()
            time.sleep(1.0)
            events.append("first done")

    thread = threading.Thread(target=first_attempt)
    thread.start()
    held.wait(10)
    with pytest.raises(RunFolderInUse, match="in use by another run"):
        with folder.claimed(owner="run-2"):
            pass
    with pytest.raises(RunFolderInUse):
        with folder.claimed():
            pass
    with folder.claimed(owner="run-1"):
        events.append("second attempt")
        assert (folder.root / OWNER_FILE).read_text() == "run-1"
    thread.join()
    assert events == ["first done", "second attempt"]
    assert not (folder.root / OWNER_FILE).exists()
    (folder.root / OWNER_FILE).write_text("run-9")  # what a killed holder left: not true of the next one
    with folder.claimed():
        assert not (folder.root / OWNER_FILE).exists()


@pytest.mark.parametrize("without", [[], ["image_encoder", "image_processor"]])  # the second: Wan2.1-T2V's layout
def test_a_text_to_video_model_is_named_as_one_before_the_run(tmp_path, capsys, without):
    model = tmp_path / "t2v"
    save_tiny_model(model)
    for part in without:
        shutil.rmtree(model / part)
    config = model / "transformer" / "config.json"
    config.write_text(config.read_text().replace('"in_channels": 36', '"in_channels": 16'))
    assert main(["film", "--run-dir", str(tmp_path / "run"), *SMALL, "--model", str(model)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "a DiT with 16 input channels (a text-to-video model)" in error and "needs an image-to-video model" in error


def test_a_dead_prefect_server_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # the discard port: nothing answers
    assert main(["film", "--run-dir", str(tmp_path / "run"), *SMALL]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert (
        len(error) == 1 and "the Prefect server at PREFECT_API_URL=http://127.0.0.1:9/api does not answer" in error[0]
    )
    assert not (tmp_path / "run").exists()


def test_generate_out_naming_a_folder_is_refused_before_rendering(tmp_path, picture, capsys):
    prompts = tmp_path / "story.txt"
    prompts.write_text("a red ball rests on the grass\n")
    args = ["generate", "--images", str(picture), "--prompts", str(prompts), "--model", str(tmp_path / "none"),
            "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 2
    assert f"--out {tmp_path} is a folder: give the film's file name" in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("flows.cli._film", interrupted)  # as if Ctrl-C came while the film was being made
    assert main(["film", "--run-dir", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err == "interrupted: what was finished is kept; run the same command again to go on\n"


@pytest.mark.usefixtures("prefect_server")
def test_bad_input_found_inside_a_flow_run_is_logged_without_a_traceback(tmp_path, caplog, capsys, monkeypatch):
    monkeypatch.setenv("SVI_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    run = [
        "film",
        "--run-dir",
        str(tmp_path / "run"),
        *SMALL,
        "--source",
        "folder",
        "--folder",
        str(tmp_path / "empty"),
    ]
    with caplog.at_level("ERROR", logger="prefect"):
        assert main(run) == 2
    failures = [record for record in caplog.records if "RetrievalError" in record.getMessage()]
    assert failures and all(record.exc_info is None for record in failures)
    assert "error: retrieval from folder for ['red ball'] found no candidate image" in capsys.readouterr().err


@pytest.mark.usefixtures("prefect_server")
def test_a_real_ctrl_c_while_clips_render_is_one_line_and_exit_130(tmp_path):
    run = tmp_path / "run"
    environment = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "SVI_CACHE_DIR": str(tmp_path / "cache")}
    film = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "film", "--run-dir", str(run), *SMALL, "--clips", "500"],
        env=environment,
        stderr=subprocess.PIPE,
        text=True,
    )
    first_clip = run / "clips" / "clip_0000.mkv"
    deadline = time.monotonic() + 120
    while not first_clip.exists() and film.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    film.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    _, stderr = film.communicate(timeout=120)
    print(f"exited {time.monotonic() - interrupted:.1f} s after SIGINT")
    assert film.returncode == 130, stderr
    assert stderr.splitlines()[-1] == "interrupted: what was finished is kept; run the same command again to go on"
    assert "Traceback" not in stderr
    assert first_clip.is_file()


def test_a_ctrl_c_that_prefect_turns_into_another_error_is_still_one_line_and_exit_130(monkeypatch, capsys):
    # Prefect ended a flow run Ctrl-C'd just as a task finished with ValueError('Task run is not set') (CI,
    # 2026-12-07), which read as bad input (exit 2). The same, without the timing: a command that is interrupted and
    # then fails with another error.
    def interrupted_then_another_error(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            raise ValueError("Task run is not set") from None

    monkeypatch.setattr(cli, "_eval_drift", interrupted_then_another_error)
    assert main(["eval", "drift"]) == 130
    assert capsys.readouterr().err.splitlines()[-1].startswith("interrupted: what was finished is kept")


@pytest.mark.usefixtures("prefect_server")
def test_too_few_own_prompts_name_the_prompt_file_to_extend(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("SVI_CACHE_DIR", str(tmp_path / "cache"))
    prompts = tmp_path / "story.txt"
    prompts.write_text("a red ball rests on the grass\n")
    with caplog.at_level("WARNING"):
        assert (
            main(["film", "--run-dir", str(tmp_path / "run"), *SMALL, "--clips", "2", "--prompts", str(prompts)]) == 0
        )
    warned = [r.getMessage() for r in caplog.records if "the stream starts over" in r.getMessage()]
    assert warned == [f"1 prompts for 2 clips: the stream starts over (write one for every clip in {prompts})"]

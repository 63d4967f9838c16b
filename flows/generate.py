"""`svi generate`: the film driver without the orchestrator. Your picture + your prompt stream → a long video.

It is the `film` flow's path without Prefect: the same request (profile `wan`, the paper's settings, by default),
the same run folder (`OUT.clips/`, holding another film: refused unless `--overwrite`), the same clip store and
resume, the same per-clip checks, the same assembly (film.mp4, film.srt, storyboard.png, manifest.json in the run
folder; the film is then placed at OUT). A preview of the film so far (`OUT.preview.mp4`) is rewritten after every
clip. Running the same command again continues after the last finished clip and gives the same film.
"""

import glob
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pipeline.assemble import assemble_run, stitched_clips, write_film
from pipeline.input_checks import check_inputs
from pipeline.request import FilmRequest, start_run
from pipeline.retrieve import normalise_reference
from pipeline.run_folder import RunFolder
from pipeline.synthesize import ClipResult, loaded_sampler, render_clips
from svi_model.atomic_files import place_file, remove_leftovers


def generate_request(fields: dict[str, Any], out: Path) -> FilmRequest:
    """The film request of `svi generate`: profile `wan` unless given, one picture, the user's prompts (one clip each
    unless `clips` is given), and the run folder `OUT.clips/` unless given."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder: give the film's file name, e.g. --out {out / 'film.mp4'}")
    request = FilmRequest(**{"profile": "wan", "run_dir": out.with_suffix(".clips"), **fields})
    if len(request.retrieve.images) != 1:
        raise ValueError("svi generate renders from one picture: give --images FILE (svi film takes several)")
    if not request.own_prompts():
        raise ValueError("svi generate needs your prompt stream: give --prompts FILE or --prompt TEXT …")
    if "clips" in fields:
        return request
    # Without --clips, one clip per prompt of the stream (each shown `prompt_repeat` times).
    clips = len(request.own_prompt_stream()[0]) * request.settings().prompt_repeat
    return FilmRequest(**{**request.model_dump(), "clips": clips})


def describe(request: FilmRequest, out: Path) -> str:
    """One line that says what will be rendered."""
    s, fps = request.settings(), request.render.fps
    return (
        f"{request.clips} clips x {s.num_frames} frames ({s.chaining} chaining, m={s.motion_frames}, "
        f"{s.padding} padding, {s.steps} steps, CFG {s.guidance_scale}) -> {out} "
        f"({s.film_length(request.clips)} frames, {s.film_length(request.clips) / fps:.1f} s at {fps:g} fps) "
        f"on {request.engine().device}"
    )


def generate_film(request: FilmRequest, out: Path) -> Path:
    """Render (or finish rendering) the film of `request`, assemble it, and place it at `out`; returns `out`."""
    check_inputs(request)
    with RunFolder(request.output.run_dir).claimed():
        return _generate(request, out)


def _generate(request: FilmRequest, out: Path) -> Path:
    job = request.clip_job(request.own_prompt_stream())
    run = start_run(request)
    normalise_reference(request.retrieve.images[0], run.reference, max_width=request.render.max_width)
    loaded_sampler(job.engine)  # a model folder that cannot load fails here, before any progress bar is drawn
    preview = out.with_name(out.stem + ".preview.mp4")
    # The film and its preview of a run killed while it placed them (no other run writes these: OUT.clips/ is ours).
    for name in (out, preview):
        remove_leftovers(out.parent, of=glob.escape(name.stem))
    clip_bar = tqdm(total=request.clips, desc="clips", unit="clip")
    step_bar = tqdm(total=job.settings.steps, desc="steps", unit="step", leave=False)

    def show_step(step: int, total: int) -> None:
        step_bar.n = step
        step_bar.refresh()

    def show_preview(result: ClipResult) -> None:
        clips = [run.clip(k) for k in range(result.k + 1)]
        write_film(stitched_clips(job.settings, clips), preview, job.fps, preset="ultrafast", progress=False)
        clip_bar.update()
        step_bar.reset()

    try:
        render_clips(run, job, request.clips, on_clip=show_preview, on_step=show_step)
    finally:  # also when a clip fails: the error line then starts on a line of its own
        step_bar.close()
        clip_bar.close()
    place_file(assemble_run(run.root), out)
    preview.unlink(missing_ok=True)
    return out

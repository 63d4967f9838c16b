"""What orchestration costs per clip, on the CPU: persistence (the synthesize stage) and Prefect (the flow).

    python bench/flow_overhead.py                       # the demo's clips: 3 x 33 frames, 8 steps, 416 px wide
    python bench/flow_overhead.py --clips 5 --out bench/results/cpu-$(date +%F).json

The same clips are made twice in one process, the engine loaded once beforehand: by the `film` flow (clip tasks:
cache key, Prefect task run, result persistence, artifacts) and by the bare `synthesize_clip` stage (FFV1 clip,
chain state, clip store, run folder). In both, the time spent inside `FilmRenderer.render_clip` (the model's
work: encode, denoise, decode) is measured and taken out, so what remains is the overhead itself, which on a
shared CPU is steadier than the difference of two noisy totals. Prefect's part = flow overhead − stage overhead.
With tiny random weights a clip takes seconds; with Wan2.1-14B on a GPU it takes minutes, so read the overhead in
seconds per clip, and its share of the clip time here as an upper bound.
Without PREFECT_API_URL the flow starts a temporary local Prefect server (its start-up is not counted).
"""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--width", type=int, default=416)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="svi-bench-"))
    os.environ["SVI_CACHE_DIR"] = str(work / "cache")  # before the flows are imported: a cold clip store
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    # Tiny random weights, as the figures were always measured (and so that building them below writes to the
    # cache's tiny-model folder, never over the shipped demo model).
    os.environ["SVI_DEMO_MODEL"] = "random"
    from flows.film import film
    from pipeline.request import FilmRequest
    from pipeline.run_folder import RunFolder, load_reference_png, save_reference_png
    from pipeline.storyline import read_prompt_stream
    from pipeline.synthesize import ClipStore, loaded_sampler, synthesize_clip
    from svi_model.chain import FilmRenderer
    from svi_model.tiny import save_tiny_model

    def request(run_dir: Path) -> FilmRequest:
        return FilmRequest(
            clips=args.clips,
            num_frames=args.frames,
            steps=args.steps,
            max_width=args.width,
            run_dir=run_dir,
            overwrite=True,
        )

    engine = request(work / "flow").engine()
    save_tiny_model(engine.model)
    loaded_sampler(engine)

    model_s = [0.0]
    render_clip = FilmRenderer.render_clip

    def timed_render_clip(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return render_clip(self, *args, **kwargs)
        finally:
            model_s[0] += time.perf_counter() - start

    FilmRenderer.render_clip = timed_render_clip

    flow_run = RunFolder(work / "flow")
    start = time.perf_counter()
    film(request(flow_run.root))
    flow_total_s = time.perf_counter() - start
    flow_clip_s = json.loads(flow_run.manifest.read_text())["timings"]["synthesize"] / args.clips
    flow_model_s, model_s[0] = model_s[0] / args.clips, 0.0

    job = request(flow_run.root).clip_job(read_prompt_stream(flow_run.storyline))
    stage_run = RunFolder(work / "stage")
    save_reference_png(load_reference_png(flow_run.reference), stage_run.reference)
    store = ClipStore(work / "stage-store")
    start = time.perf_counter()
    for k in range(args.clips):
        synthesize_clip(stage_run, k, job, store=store)
    stage_clip_s = (time.perf_counter() - start) / args.clips
    stage_model_s = model_s[0] / args.clips

    persistence_s = stage_clip_s - stage_model_s
    prefect_s = (flow_clip_s - flow_model_s) - persistence_s
    figures = {
        "device": f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "clips": args.clips,
        "frames": args.frames,
        "steps": args.steps,
        "width": args.width,
        "demo_flow_total_s": round(flow_total_s, 2),
        "flow_s_per_clip": round(flow_clip_s, 3),
        "model_s_per_clip": round(flow_model_s, 3),
        "persistence_s_per_clip": round(persistence_s, 3),
        "prefect_s_per_clip": round(prefect_s, 3),
        "orchestration_share_of_flow_clip": round((flow_clip_s - flow_model_s) / flow_clip_s, 4),
    }
    print(f"{args.clips} clips of {args.frames} frames, {args.steps} steps, {args.width} px, {figures['device']}")
    print(f"model (render_clip)   {flow_model_s:7.2f} s per clip")
    print(f"persistence           {persistence_s:7.3f} s per clip")
    print(f"Prefect task          {prefect_s:7.3f} s per clip")
    print(f"orchestration share   {100 * figures['orchestration_share_of_flow_clip']:6.2f}% of the flow's clip time")
    print(f"whole flow (retrieve, storyline, clips, assemble): {flow_total_s:.1f} s")
    if args.out:
        command = f"python bench/flow_overhead.py --clips {args.clips} --frames {args.frames} --steps {args.steps}"
        figures["command"] = f"{command} --width {args.width}"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()

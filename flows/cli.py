"""The `svi` command line.

    svi generate --mode film --image frame.jpg --prompts story.txt --clips 10 --model weights/Wan2.1-I2V-14B-480P \
                 --lora weights/svi-film-opt-10212025.safetensors --out film.mp4
    svi demo                 # the embedded default: `svi film` offline on the CPU with tiny random weights
    svi film --keywords "red ball" --clips 3 --run-dir runs/red-ball     # the Prefect flow (offline by default)
    svi prompts --keywords "red ball" --clips 3 --run-dir runs/red-ball  # the storyline only, to edit
    svi assemble --run-dir runs/red-ball                                 # film, subtitles, storyboard again
    svi server                # the Prefect UI on http://127.0.0.1:4200
    svi serve                 # the flows as deployments: start runs and Retry failed ones from the UI
    svi batch films.yaml      # several films
    svi train --config train.yaml   # Error-Recycling Fine-Tuning of an SVI LoRA (docs/train.yaml)
    svi cache [--clear]       # what $SVI_CACHE_DIR holds; free it (run folders keep their films and clips)

Bad input ends with one `error:` line that names the input and what to do, and exit code 2.
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Prefect's telemetry heartbeat only fails (and logs tracebacks) on these offline machines.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Without PREFECT_API_URL a run starts a temporary local server; its first start creates the database, which on a
# small machine can outlast Prefect's default wait of 20 s.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def _add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to render")
    what.add_argument("--mode", choices=["film", "shot", "tom", "pro"], default="film", help="SVI variant (preset)")
    what.add_argument("--image", type=Path, required=True, help="the reference image (first frame)")
    prompts = what.add_mutually_exclusive_group(required=True)
    prompts.add_argument(
        "--prompts", type=Path, help="prompt stream file: .txt (one per line), .yaml, or prompts = [...]"
    )
    prompts.add_argument("--prompt", action="append", help="a prompt (repeat the flag for a stream)")
    what.add_argument("--clips", type=int, default=None, help="clips to render (default: one per prompt)")
    what.add_argument("--out", type=Path, default=Path("film.mp4"), help="output MP4 (clips are kept in OUT.clips/)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", type=Path, required=True, help="local Wan2.1-I2V-14B-480P folder")
    model.add_argument("--lora", type=Path, help="SVI LoRA .safetensors (e.g. svi-film-opt-10212025.safetensors)")
    model.add_argument("--lora-scale", type=float, default=1.0, help="LoRA strength alpha (default 1)")
    model.add_argument("--no-fuse", dest="fuse_lora", action="store_false", help="keep the LoRA as an adapter")
    sampling = parser.add_argument_group("sampling (defaults: the preset's, i.e. the paper's)")
    sampling.add_argument("--steps", type=int)
    sampling.add_argument("--cfg", type=float, dest="guidance_scale")
    sampling.add_argument("--seed", type=int, help="base seed; clip k uses seed*k (default 42)")
    sampling.add_argument("--frames", type=int, dest="num_frames", help="frames per clip, 4k+1 (default 81)")
    sampling.add_argument("--motion-frames", type=int, help="m: frames of the previous clip that condition the next")
    sampling.add_argument("--padding", choices=["zeros", "reference"])
    sampling.add_argument("--reference-count", type=int, help="reference padding: k references, then zeros")
    sampling.add_argument("--prompt-mode", choices=["first", "stream"])
    sampling.add_argument("--prompt-repeat", type=int, help="clips per prompt of the stream")
    output = parser.add_argument_group("output and hardware")
    output.add_argument("--fps", type=float, default=16)
    output.add_argument("--max-width", type=int, default=832, help="the image is resized to at most this width")
    output.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    output.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto", help="DiT and T5 dtype")
    output.add_argument("--offload", choices=["none", "model", "group"], default="none", help="for smaller GPUs")
    output.add_argument("--vae-tiling", action="store_true", help="less VAE memory (slightly changes the output)")
    output.add_argument("--overwrite", action="store_true", help="discard stored clips of a different request")


_SETTING_FLAGS = (
    "steps",
    "guidance_scale",
    "seed",
    "num_frames",
    "motion_frames",
    "padding",
    "reference_count",
    "prompt_mode",
    "prompt_repeat",
)


def _request_from(args: argparse.Namespace):
    from pipeline.engines import EngineSpec
    from pipeline.generate import GenerateRequest
    from pipeline.prompt_files import read_prompt_file
    from svi_model.recipes import preset

    prompts = read_prompt_file(args.prompts) if args.prompts else args.prompt
    overrides = {name: getattr(args, name) for name in _SETTING_FLAGS if getattr(args, name) is not None}
    settings = preset(args.mode, **overrides)
    clips = args.clips if args.clips is not None else len(prompts) * settings.prompt_repeat
    engine = dict(
        model=args.model,
        lora=args.lora,
        lora_scale=args.lora_scale,
        fuse_lora=args.fuse_lora,
        dtype=args.dtype,
        offload=args.offload,
        vae_tiling=args.vae_tiling,
    )
    if args.device is not None:
        engine["device"] = args.device
    fields = dict(
        image=args.image,
        prompts=prompts,
        clips=clips,
        settings=settings,
        engine=EngineSpec(**engine),
        out=args.out,
        fps=args.fps,
        max_width=args.max_width,
        overwrite=args.overwrite,
    )
    return GenerateRequest(**fields)


def _generate(args: argparse.Namespace) -> None:
    from pipeline.generate import describe, generate_film

    request = _request_from(args)
    print(describe(request), flush=True)
    print(f"wrote {generate_film(request)}")


def _demo(args: argparse.Namespace) -> None:
    from flows.film import film
    from pipeline.film_request import FilmRequest
    from pipeline.run_folder import RunFolder

    print(
        "DEMO: keywords -> bundled picture -> template storyline -> tiny RANDOM weights (built offline) -> film. "
        "It runs every stage of the real flow, but the pictures are noise, not a story. "
        "For a real film, see 'A real SVI film on a GPU' in README.md.",
        flush=True,
    )
    path = film(FilmRequest(keywords=args.keywords, clips=args.clips, run_dir=args.run_dir))
    run = RunFolder(path.parent)
    for made in (run.film, run.subtitles, run.storyboard, run.manifest, run.storyline):
        print(f"wrote {made}")


def _add_film_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `svi film` / `svi prompts`: the fields of FilmRequest (unset ones take the profile's value)."""
    parser.add_argument("--keywords", nargs="+", help="what the film is about, e.g. --keywords 'red ball' meadow")
    parser.add_argument("--images", nargs="+", type=Path, help="your own pictures instead of retrieval")
    parser.add_argument("--prompts", dest="prompts_file", type=Path, help="your own prompt stream file")
    parser.add_argument("--clips", type=int)
    parser.add_argument("--mode", choices=["film", "shot", "tom", "pro"])
    parser.add_argument("--profile", choices=["demo", "wan"])
    parser.add_argument("--run-dir", type=Path)
    parser.add_argument("--model", type=Path, help="local Wan2.1-I2V-14B-480P folder")
    parser.add_argument("--lora", type=Path)
    parser.add_argument("--lora-scale", type=float)
    parser.add_argument("--device")
    parser.add_argument(
        "--source", choices=["bundled", "bing", "google", "baidu", "flickr", "greedy", "urls", "folder"]
    )
    parser.add_argument("--site", help="--source greedy: the site to collect pictures from")
    parser.add_argument("--urls", nargs="+", help="--source urls: picture addresses")
    parser.add_argument("--image-folder", type=Path, help="--source folder: your pictures to choose from")
    parser.add_argument("--license", help="bing: licence filter, e.g. commercial,modify")
    parser.add_argument("--max-images", type=int, help="most accepted pictures kept to choose from (default 8)")
    parser.add_argument("--min-side", type=int, help="shortest side a picture may have, px (default 256)")
    parser.add_argument("--storyline", dest="storyline_backend", choices=["template", "qwen", "openai"])
    parser.add_argument("--qwen-model", type=Path, help="local Qwen2.5-VL-3B/7B-Instruct folder")
    parser.add_argument("--openai-base-url")
    parser.add_argument("--openai-model")
    parser.add_argument("--style")
    parser.add_argument("--genre")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--cfg", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--fps", type=float)
    parser.add_argument("--width", type=int, help="film width at most (default 416 demo, 832 wan)")
    parser.add_argument("--overwrite", action="store_true", default=None, help="RUN_DIR holds another film: delete it")
    parser.add_argument("--chapters", type=int, help="chapters, each from its own picture (default 1)")
    parser.add_argument("--crossfade", dest="crossfade_s", type=float, help="seconds chapters fade into each other")


def _film_request(args: argparse.Namespace):
    from pipeline.film_request import FilmRequest

    fields = {name: value for name, value in vars(args).items() if name in FilmRequest.model_fields}
    if args.license:
        fields["filters"] = {"license": args.license}
    return FilmRequest(**{name: value for name, value in fields.items() if value is not None})


def _film(args: argparse.Namespace) -> None:
    from flows.film import film

    print(f"wrote {film(_film_request(args))}")


def _prompts(args: argparse.Namespace) -> None:
    from flows.film import prompts

    for path in prompts(_film_request(args)):
        print(f"wrote {path}")
    print("edit the prompts, then run `svi film` with the same --run-dir to render them")


def _assemble(args: argparse.Namespace) -> None:
    from pipeline.assemble import assemble_film

    print(f"wrote {assemble_film(args.run_dir)}")


def _serve(args: argparse.Namespace) -> None:
    from flows.serve import serve_flows

    serve_flows(gpu_slots=args.gpu_slots)


def _server(args: argparse.Namespace) -> None:
    os.execvp("prefect", ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(args.port)])


def _batch(args: argparse.Namespace) -> None:
    from flows.batch import batch

    for path in batch(args.file):
        print(f"wrote {path}")


def _train(args: argparse.Namespace) -> None:
    from flows.train import run_training

    print(f"wrote {run_training(args.config)}")


def _cache(args: argparse.Namespace) -> None:
    from pipeline.cache_usage import cache_usage, clear_cache

    if args.clear:
        for part in clear_cache():
            print(f"deleted {part.what}: {part.files} files, {part.bytes / 1e6:.1f} MB ({part.path})")
        return
    for part in cache_usage():
        print(f"{part.what:22} {part.files:6d} files {part.bytes / 1e6:10.1f} MB  {part.path}")


def _user_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean bad input (reported in one line), as opposed to bugs (reported with a traceback)."""
    from pydantic import ValidationError

    return (ValueError, ValidationError, FileNotFoundError)


def _one_line(err: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg'].removeprefix('Value error, ')}" for e in err.errors()
        )
    return str(err)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="svi", description="Long AI videos with Stable Video Infinity")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="render a film from an image and a prompt stream")
    _add_generate_arguments(generate)
    generate.set_defaults(run=_generate)
    demo = commands.add_parser("demo", help="the embedded default: keywords to film, offline, CPU, random weights")
    demo.add_argument("--keywords", nargs="+", default=["red ball"])
    demo.add_argument("--clips", type=int, default=3)
    demo.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    demo.set_defaults(run=_demo)
    film = commands.add_parser("film", help="keywords (or pictures) to film, as a Prefect flow")
    _add_film_arguments(film)
    film.set_defaults(run=_film)
    prompts = commands.add_parser("prompts", help="write the storyline only (storyline.yaml), to edit before rendering")
    _add_film_arguments(prompts)
    prompts.set_defaults(run=_prompts)
    assemble = commands.add_parser("assemble", help="assemble film.mp4, film.srt, storyboard.png from a run folder")
    assemble.add_argument("--run-dir", type=Path, required=True)
    assemble.set_defaults(run=_assemble)
    serve = commands.add_parser("serve", help="serve the flows as deployments (Run and Retry from the UI)")
    serve.add_argument("--gpu-slots", type=int, default=1, help="clip tasks that may share the GPU at once")
    serve.set_defaults(run=_serve)
    server = commands.add_parser("server", help="start the Prefect server and UI on 127.0.0.1")
    server.add_argument("--port", type=int, default=4200)
    server.set_defaults(run=_server)
    batch = commands.add_parser("batch", help="make every film listed in a YAML file")
    batch.add_argument("file", type=Path)
    batch.set_defaults(run=_batch)
    cache = commands.add_parser("cache", help="what $SVI_CACHE_DIR holds (stored clips, task results); --clear")
    cache.add_argument("--clear", action="store_true", help="delete stored clips and task results (films are kept)")
    cache.set_defaults(run=_cache)
    train = commands.add_parser("train", help="Error-Recycling Fine-Tuning: make an SVI LoRA (see docs/train.yaml)")
    train.add_argument("--config", type=Path, required=True, help="train.yaml")
    train.set_defaults(run=_train)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except _user_errors() as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

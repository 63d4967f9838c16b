"""The `svi` command line.

    svi generate --mode film --images frame.jpg --prompts story.txt --clips 10 --model weights/Wan2.1-I2V-14B-480P \
                 --lora weights/svi-film-opt-10212025.safetensors --out film.mp4
    svi demo                 # the embedded default: `svi film` offline on the CPU with the toy-world demo model
    svi film --keywords "red ball" --clips 3 --run-dir runs/red-ball     # the Prefect flow (offline by default)
    svi prompts --keywords "red ball" --clips 3 --run-dir runs/red-ball  # the storyline only, to edit
    svi assemble --run-dir runs/red-ball                                 # film, subtitles, storyboard again
    svi server                # the Prefect UI on http://127.0.0.1:4200
    svi serve                 # the flows as deployments: start runs and Retry failed ones from the UI
    svi batch films.yaml      # several films
    svi train --config train.yaml   # Error-Recycling Fine-Tuning of an SVI LoRA (docs/train.yaml)
    svi cache [--clear]       # what $SVI_CACHE_DIR holds; free it (run folders keep their films and clips)

`svi film`, `svi prompts` and `svi generate` take one flag per field of the film request (`pipeline.request`),
named as the field. Bad input ends with one `error:` line that names the input and what to do, and exit code 2;
what the machine could not do (GPU memory, a full disk, ffmpeg stopping) one `error:` line too, and exit code 1.
"""

import argparse
import errno
import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Prefect's telemetry heartbeat only fails (and logs tracebacks) on these offline machines.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Without PREFECT_API_URL a run starts a temporary local server; its first start creates the database, which on a
# small machine can outlast Prefect's default wait of 20 s.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

from flows.request_flags import add_request_flags, given_fields  # noqa: E402  (after the environment is set)


def _generate(args: argparse.Namespace) -> None:
    from flows.generate import describe, generate_film, generate_request

    request = generate_request(given_fields(args), args.out)
    print(describe(request, args.out), flush=True)
    print(f"wrote {generate_film(request, args.out)}")


def _demo(args: argparse.Namespace) -> None:
    from flows.film import film
    from pipeline.cache_folder import anchored_paths
    from pipeline.input_checks import check_inputs
    from pipeline.request import FilmRequest
    from pipeline.run_folder import RunFolder

    request = anchored_paths(FilmRequest(keywords=args.keywords, clips=args.clips, run_dir=args.run_dir), Path.cwd())
    check_inputs(request)
    _check_prefect_server()
    if request.uses_random_weights():
        model = "tiny RANDOM weights (no demo model folder): the pictures will be noise, not a story"
    else:
        model = f"the demo model trained on the toy world ({request.engine().model}), 112x64"
    print(
        f"DEMO: keywords -> bundled picture -> template storyline -> {model} -> film. "
        "For a real film, see 'A real SVI film on a GPU' in README.md.",
        flush=True,
    )
    path = film(request)
    run = RunFolder(path.parent)
    for made in (run.film, run.subtitles, run.storyboard, run.manifest, run.storyline):
        print(f"wrote {made}")


def _film_request(args: argparse.Namespace):
    """The request the flags make (its relative paths taken from here, not from the data root as in a flow), its
    files checked before a Prefect server is started for it."""
    from pipeline.cache_folder import anchored_paths
    from pipeline.input_checks import check_inputs
    from pipeline.request import FilmRequest

    request = anchored_paths(FilmRequest(**given_fields(args)), Path.cwd())
    check_inputs(request)
    _check_prefect_server()
    return request


def _check_prefect_server() -> None:
    """With PREFECT_API_URL set, the server must answer now: Prefect itself would retry for a minute and end in
    pages of connection tracebacks."""
    import httpx

    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return
    try:
        httpx.get(url.rstrip("/") + "/health", timeout=5).raise_for_status()
    except httpx.HTTPError as err:
        raise ValueError(
            f"the Prefect server at PREFECT_API_URL={url} does not answer ({type(err).__name__}): start it with "
            "`svi server`, or unset PREFECT_API_URL to run on a temporary local server"
        ) from None


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


def _shared_prefect_server(command: str) -> None:
    """A work pool lives on a server every machine reaches: a temporary one (no PREFECT_API_URL) would vanish."""
    if not os.environ.get("PREFECT_API_URL"):
        raise ValueError(
            f"svi {command} needs the Prefect server the GPU machines share: start it with `svi server` and set "
            "PREFECT_API_URL (e.g. http://127.0.0.1:4200/api) here and on every machine"
        )
    _check_prefect_server()


def _deploy(args: argparse.Namespace) -> None:
    from flows.deploy import deploy_flows

    _shared_prefect_server("deploy")
    for name in deploy_flows(args.pool):
        print(f"deployed {name} on work pool {args.pool}")
    print(f"start a worker per GPU: svi worker --pool {args.pool} --gpu 0")


def _worker(args: argparse.Namespace) -> None:
    from flows.deploy import worker_command

    _shared_prefect_server("worker")
    command, environment = worker_command(args.pool, args.gpu, args.name)
    os.execve(command[0], command, environment)


def _server(args: argparse.Namespace) -> None:
    # `prefect server start --port` does not move the address the UI calls (it stays :4200 unless told).
    os.environ.setdefault("PREFECT_UI_API_URL", f"http://{args.host}:{args.port}/api")
    # The prefect command beside this Python: `.venv/bin/svi server` works without the venv on PATH.
    prefect = str(Path(sys.executable).with_name("prefect"))
    os.execv(prefect, [prefect, "server", "start", "--host", args.host, "--port", str(args.port)])


def _batch(args: argparse.Namespace) -> None:
    from flows.batch import batch

    _check_prefect_server()
    for path in batch(args.file.resolve(), fan_out=args.fan_out):
        print(f"wrote {path}")


def _train(args: argparse.Namespace) -> None:
    from flows.train import run_training

    print(f"wrote {run_training(args.config)}")


def _eval_drift(args: argparse.Namespace) -> None:
    from svi_model.demo_model import LORA_FILE, SHIPPED_FOLDER
    from svi_model.drift.benchmark import run_drift_benchmark
    from svi_model.drift.evaluate import Variant

    model = args.model or SHIPPED_FOLDER
    variants = [_variant(text) for text in args.variant] or [Variant("base"), Variant("erft", model / LORA_FILE)]
    erft = next((v for v in variants if v.name == "erft"), None)
    if args.sweep and erft is None:
        raise ValueError("--sweep scales the variant named erft: add --variant erft=LORA.safetensors")
    variants += [Variant(f"erft@{scale}", erft.lora, scale) for scale in args.sweep if scale != erft.scale]
    for variant in variants:
        if variant.lora is not None and not variant.lora.is_file():
            raise FileNotFoundError(f"variant {variant.name}: no LoRA file {variant.lora}")
    for path in run_drift_benchmark(model, variants, args.films, args.clips, args.steps, args.out, name=args.name):
        print(f"wrote {path}")


def _variant(text: str):
    """`NAME=FILE[@SCALE]` or `NAME=none` (the base alone) as a drift-evaluation Variant."""
    from svi_model.drift.evaluate import Variant

    name, _, rest = text.partition("=")
    lora, _, scale = rest.rpartition("@") if "@" in rest else (rest, "", "1")
    if not name or not lora:
        raise ValueError(f"--variant {text}: write NAME=LORA.safetensors[@SCALE], or NAME=none for the base alone")
    return Variant(name, None if lora == "none" else Path(lora), float(scale))


def _cache(args: argparse.Namespace) -> None:
    from pipeline.cache_folder import cache_usage, clear_cache

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


def _machine_problem(err: BaseException) -> bool:
    """The machine failed the run, not the input (the GPU's memory, a full disk, ffmpeg stopping): one line too, but
    exit code 1; the same command works once the machine allows it, and finished clips are kept."""
    from pipeline.synthesize import GpuOutOfMemory
    from svi_model.video_files import VideoWriteError

    disk_full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
    return disk_full or isinstance(err, GpuOutOfMemory | VideoWriteError)


def _one_line(err: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" ({err.filename})" if err.filename else ""
        return f"{err.strerror}{where}: free some space, then run the same command again (finished clips are kept)"

    if isinstance(err, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg'].removeprefix('Value error, ')}" for e in err.errors()
        )
    return str(err)


class _NoTracebackForBadInput(logging.Filter):
    """Prefect logs a failed flow or task run with its traceback; for bad input and the machine's problems (the
    errors `main` reports in one line) the traceback only buries that line, so the record keeps its message and
    drops the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and (isinstance(error, _user_errors()) or _machine_problem(error)):
            record.exc_info, record.exc_text = None, None
        return True


class _OneLineErrors(argparse.ArgumentParser):
    """A bad flag is one `error:` line naming it, like every other bad input (not argparse's usage block)."""

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def main(argv: list[str] | None = None) -> int:
    parser = _OneLineErrors(prog="svi", description="Long AI videos with Stable Video Infinity")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser(
        "generate",
        help="render a film from your picture and prompt stream, without Prefect (paper settings: profile wan)",
    )
    generate.add_argument("--out", type=Path, default=Path("film.mp4"), help="output MP4 (run folder: OUT.clips/)")
    add_request_flags(generate)
    generate.set_defaults(run=_generate)
    demo = commands.add_parser(
        "demo", help="the embedded default: keywords to film, offline, CPU, the toy-world demo model"
    )
    demo.add_argument("--keywords", nargs="+", default=["red ball"])
    demo.add_argument("--clips", type=int, default=6)
    demo.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    demo.set_defaults(run=_demo)
    film = commands.add_parser("film", help="keywords (or pictures) to film, as a Prefect flow")
    add_request_flags(film)
    film.set_defaults(run=_film)
    prompts = commands.add_parser("prompts", help="write the storyline only (storyline.yaml), to edit before rendering")
    add_request_flags(prompts)
    prompts.set_defaults(run=_prompts)
    assemble = commands.add_parser("assemble", help="assemble film.mp4, film.srt, storyboard.png from a run folder")
    assemble.add_argument("--run-dir", type=Path, required=True)
    assemble.set_defaults(run=_assemble)
    serve = commands.add_parser("serve", help="serve the flows as deployments (Run and Retry from the UI)")
    serve.add_argument("--gpu-slots", type=int, default=1, help="clip tasks that may share the GPU at once")
    serve.set_defaults(run=_serve)
    server = commands.add_parser("server", help="start the Prefect server and UI on 127.0.0.1")
    server.add_argument("--port", type=int, default=4200)
    server.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default: this machine only; the UI has no login, so 0.0.0.0 opens it to "
        "everyone on the network)",
    )
    server.set_defaults(run=_server)
    deploy = commands.add_parser("deploy", help="put the flows on a Prefect work pool, for workers on GPU machines")
    deploy.add_argument("--pool", default="svi-gpu", help="the process work pool (made if missing)")
    deploy.set_defaults(run=_deploy)
    worker = commands.add_parser("worker", help="run the pool's films, one at a time, on this machine's GPU")
    worker.add_argument("--pool", default="svi-gpu")
    worker.add_argument("--gpu", help="the CUDA device this worker uses (sets CUDA_VISIBLE_DEVICES)")
    worker.add_argument("--name", help="the worker's name (default: host and GPU)")
    worker.set_defaults(run=_worker)
    batch = commands.add_parser("batch", help="make every film listed in a YAML file")
    batch.add_argument("file", type=Path)
    batch.add_argument(
        "--fan-out", action="store_true", help="each film a run on the work pool (svi deploy), many at once"
    )
    batch.set_defaults(run=_batch)
    cache = commands.add_parser("cache", help="what $SVI_CACHE_DIR holds (stored clips, task results); --clear")
    cache.add_argument("--clear", action="store_true", help="delete stored clips and task results (films are kept)")
    cache.set_defaults(run=_cache)
    train = commands.add_parser("train", help="Error-Recycling Fine-Tuning: make an SVI LoRA (see docs/train.yaml)")
    train.add_argument("--config", type=Path, required=True, help="train.yaml")
    train.set_defaults(run=_train)
    evaluate = commands.add_parser("eval", help="benchmarks of a model's films").add_subparsers(
        dest="what", required=True
    )
    drift = evaluate.add_parser("drift", help="chained toy-world films per variant, drift measured clip by clip")
    drift.add_argument("--model", type=Path, help="a toy-world model folder (default: the shipped demo model)")
    drift.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=LORA[@SCALE] or NAME=none (default: base, erft)",
    )
    drift.add_argument("--sweep", type=float, nargs="*", default=[], help="more strengths of the erft variant")
    drift.add_argument("--films", type=int, default=10, help="held-out films (pictures and prompt streams)")
    drift.add_argument("--clips", type=int, default=30, help="clips per film")
    drift.add_argument("--steps", type=int, default=20, help="sampling steps per clip")
    drift.add_argument("--out", type=Path, default=Path("bench/results"))
    drift.add_argument("--name", help="added to the output files' names: drift-DATE-NAME.json (default: drift-DATE)")
    drift.set_defaults(run=_eval_drift)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, or a bad flag (already reported)
        return exit.code
    for logger in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(logger).addFilter(_NoTracebackForBadInput())
    with _ctrl_c_remembered() as interrupted:
        try:
            args.run(args)
        except (KeyboardInterrupt, Exception) as err:
            if isinstance(err, KeyboardInterrupt) or interrupted.is_set():
                print("interrupted: what was finished is kept; run the same command again to go on", file=sys.stderr)
                return 130
            if isinstance(err, _user_errors()):
                print(f"error: {_one_line(err)}", file=sys.stderr)
                return 2
            if not _machine_problem(err):
                raise
            print(f"error: {_one_line(err)}", file=sys.stderr)
            return 1
    return 0


@contextmanager
def _ctrl_c_remembered():
    """An event that Ctrl-C sets (it still raises KeyboardInterrupt). Prefect can turn that KeyboardInterrupt into
    another error on its way out: a Ctrl-C as a task finishes ends the flow run with `ValueError('Task run is not
    set')`. After a Ctrl-C, whatever ends the command is the interruption."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def remember(signum, frame):
        interrupted.set()
        signal.default_int_handler(signum, frame)

    previous = signal.signal(signal.SIGINT, remember)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())

"""Command line: write a toy-world training dataset or a folder of tagged pictures.

python -m svi_model.toyworld dataset OUT --count N --seed S [--frames 33 --height 64 --width 112 --fps 16]
python -m svi_model.toyworld pictures OUT --count N --seed S [--height 480 --width 832]
"""

import argparse

from .files import write_dataset, write_pictures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m svi_model.toyworld", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    dataset = commands.add_parser("dataset", help="training videos in the MixKit layout (one category per motion)")
    pictures = commands.add_parser("pictures", help="still PNG pictures and their library.yaml of tags")
    for command, height, width in ((dataset, 64, 112), (pictures, 480, 832)):
        command.add_argument("out", help="a new (or empty) folder to write to")
        command.add_argument("--count", type=int, required=True, help="how many clips or pictures")
        command.add_argument("--seed", type=int, required=True, help="the same seed writes the same files")
        command.add_argument("--height", type=int, default=height)
        command.add_argument("--width", type=int, default=width)
    dataset.add_argument("--frames", type=int, default=33, help="frames per clip")
    dataset.add_argument("--fps", type=float, default=16)
    args = parser.parse_args(argv)
    try:
        if args.command == "dataset":
            paths = write_dataset(
                args.out, args.count, args.seed, args.frames, args.height, args.width, args.fps, progress=True
            )
        else:
            paths = write_pictures(args.out, args.count, args.seed, args.height, args.width)
    except (ValueError, FileExistsError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"wrote {len(paths)} {'clips' if args.command == 'dataset' else 'pictures'} to {args.out}")


if __name__ == "__main__":
    main()

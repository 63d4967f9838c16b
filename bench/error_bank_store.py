"""Filing an error into a full grid of an error bank at real size: the most-similar search, on the CPU.

    python bench/error_bank_store.py                  # Z=100 errors of [16, 21, 60, 104] in bf16 (one grid)
    python bench/error_bank_store.py --per-grid 500   # the released Z (about 2.1 GB for the grid)

With full grids every ERFT step files two errors (one per bank), each searching its grid for the most similar
stored error. This times `ErrorBank.store` against the plain way of measuring (subtract every row in float32,
square, sum), in the same run, and checks both pick the same row.
"""

import argparse
import time

import torch

from svi_model.erft.error_bank import ErrorBank

REAL_ERROR = (16, 21, 60, 104)  # latents of 81 frames at 480×832


def plain_nearest_row(rows: torch.Tensor, error: torch.Tensor) -> int:
    """The baseline: ‖row − error‖² row by row in float32."""
    target = error.reshape(-1).float()
    return int(torch.stack([(row.reshape(-1).float() - target).square().sum() for row in rows]).argmin())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-grid", type=int, default=100)
    parser.add_argument("--stores", type=int, default=5)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    bank = ErrorBank("bench", num_grids=1, per_grid=args.per_grid, error_shape=REAL_ERROR, dtype=torch.bfloat16)
    for _ in range(args.per_grid):
        bank.store(torch.randn(REAL_ERROR, generator=generator), 0)
    errors = [torch.randn(REAL_ERROR, generator=generator) for _ in range(args.stores)]

    plain_s, store_s = 0.0, 0.0
    for error in errors:
        rows = bank.state_dict()["errors.0"]
        start = time.perf_counter()
        expected = plain_nearest_row(rows, error.to(torch.bfloat16))
        plain_s += time.perf_counter() - start
        start = time.perf_counter()
        row = bank.store(error, 0)
        store_s += time.perf_counter() - start
        assert row == expected, f"store chose row {row}, the plain search row {expected}"

    size = f"Z={args.per_grid} errors of {list(REAL_ERROR)} bf16 ({bank.nbytes / 1e9:.2f} GB)"
    print(f"{size}, {torch.get_num_threads()} CPU threads, {args.stores} stores into the full grid")
    print(f"plain float32 search: {1000 * plain_s / args.stores:8.1f} ms per store")
    print(
        f"ErrorBank.store:      {1000 * store_s / args.stores:8.1f} ms per store "
        f"({plain_s / store_s:.1f}x faster, same rows)"
    )


if __name__ == "__main__":
    main()

"""One error bank of Error-Recycling Fine-Tuning: errors the DiT made, filed by test-time timestep.

A bank has one grid per test-time sampling step (50: the sigmas of `shifted_sigmas(50)` without the final 0, the
authors' `get_timesteps(50, shift=5)`); a training σ files under the nearest of them (`grid_of`). Each grid holds at
most `capacity` errors of one latent shape. When a grid is full, a new error replaces the stored error closest to
it in L2 distance, so the bank keeps errors that differ from each other rather than the latest ones.

Memory: one SVI-size error (`[16, 21, 60, 104]`) is 4.2 MB in bf16, so a full bank of 50 × 500 is 105 GB. Two
ways to live with that, both optional:
* `budget_bytes`: the most the bank may hold. It lowers the per-grid capacity to what fits (logged as a warning);
  a lower Z is a different experiment (the paper's Table 8), so the budget is a choice, never applied silently.
* `storage_dir`: each grid is a file mapped into memory (`torch.from_file`), so the OS pages errors to disk. Reading
  a full grid for the distance search then costs disk bandwidth whenever the grid is not in the page cache.
Host-memory grids are allocated at full capacity when first used; the OS commits the pages only as errors are
written, so memory grows with the fill rather than in 2-GB steps.
"""

import logging
import math
from pathlib import Path

import torch

from ..schedule import shifted_sigmas

log = logging.getLogger(__name__)

REFINED_CANDIDATES = 8  # rows whose distance is measured exactly after the fast ranking


def grid_sigmas(num_grids: int = 50) -> torch.Tensor:
    """The sigmas of the test-time schedule the grids stand for: float64 `[num_grids]`, from 1 down.

    `shifted_sigmas` ends with σ=0, where the sampler stops; no step runs there, so it is no grid.
    """
    return shifted_sigmas(num_grids)[:-1]


def grid_of(sigma: float, test_sigmas: torch.Tensor) -> int:
    """The grid a training σ files under: the index of the nearest test sigma (the first one on a tie)."""
    return int((test_sigmas.to(torch.float64) - float(sigma)).abs().argmin())


class ErrorBank:
    """`num_grids` grids of at most `capacity` errors of shape `error_shape`, stored in `dtype` on the CPU.

    Args:
        name: used in log lines and in the names of disk-backed files.
        per_grid: the wanted errors per grid (the paper's Z).
        budget_bytes: the most the full bank may hold; lowers the capacity below `per_grid` if needed.
        storage_dir: keep the errors in memory-mapped files there instead of host memory (one file per grid;
            each process needs its own folder or name).
    """

    def __init__(
        self,
        name: str,
        num_grids: int,
        per_grid: int,
        error_shape: tuple[int, ...],
        dtype: torch.dtype = torch.bfloat16,
        budget_bytes: int | None = None,
        storage_dir: str | Path | None = None,
    ):
        if num_grids < 1 or per_grid < 1:
            raise ValueError(
                f"bank {name!r} needs at least one grid and one error per grid, got {num_grids}, {per_grid}"
            )
        self.name, self.num_grids, self.error_shape, self.dtype = name, num_grids, tuple(error_shape), dtype
        self.error_bytes = math.prod(self.error_shape) * dtype.itemsize
        self.capacity = per_grid
        if budget_bytes is not None:
            self.capacity = min(per_grid, budget_bytes // (num_grids * self.error_bytes))
            if self.capacity < 1:
                raise ValueError(
                    f"bank {name!r}: a budget of {budget_bytes / 1e9:.2f} GB cannot hold one "
                    f"{self.error_bytes / 1e6:.1f}-MB error in each of its {num_grids} grids: raise it to at least "
                    f"{num_grids * self.error_bytes / 1e9:.2f} GB or use disk-backed storage"
                )
            if self.capacity < per_grid:
                log.warning(
                    "bank %s: the %.1f-GB budget holds %d errors per grid, not %d (Z changes results: paper Table 8)",
                    name,
                    budget_bytes / 1e9,
                    self.capacity,
                    per_grid,
                )
        self.storage_dir = None if storage_dir is None else Path(storage_dir)
        if self.storage_dir is not None:
            self.storage_dir.mkdir(parents=True, exist_ok=True)
        self._grids: list[torch.Tensor | None] = [None] * num_grids
        # Squared L2 norm of every stored row (float32), so that finding the most similar row is one matrix-vector
        # product over the grid instead of a subtraction, a square and a sum.
        self._norms: list[torch.Tensor | None] = [None] * num_grids
        self._counts = [0] * num_grids
        log.info(
            "bank %s: %d grids × %d errors of %s %s (%.1f MB each), up to %.1f GB%s",
            name,
            num_grids,
            self.capacity,
            list(self.error_shape),
            str(dtype).removeprefix("torch."),
            self.error_bytes / 1e6,
            self.max_nbytes / 1e9,
            f" in files under {self.storage_dir}" if self.storage_dir else " of host memory",
        )

    # ---- size ------------------------------------------------------------------------------------------------------

    @property
    def counts(self) -> list[int]:
        """Errors stored per grid."""
        return list(self._counts)

    @property
    def nbytes(self) -> int:
        """Bytes the stored errors take."""
        return sum(self._counts) * self.error_bytes

    @property
    def max_nbytes(self) -> int:
        """Bytes of the bank when every grid is full."""
        return self.num_grids * self.capacity * self.error_bytes

    def fill(self) -> float:
        """The stored fraction of the full bank, in [0, 1]."""
        return sum(self._counts) / (self.num_grids * self.capacity)

    # ---- storing and drawing ---------------------------------------------------------------------------------------

    def store(self, error: torch.Tensor, grid: int) -> int:
        """File one error `error_shape` under `grid`; returns the row it now occupies.

        While the grid has room the error takes the next row; when it is full, the row of the stored error with the
        smallest L2 distance to it (measured after the cast to the storage dtype, as the authors do).
        """
        if tuple(error.shape) != self.error_shape:
            raise ValueError(
                f"bank {self.name!r} holds errors of shape {list(self.error_shape)}, got {list(error.shape)}"
            )
        stored = self._grid_storage(grid)
        error = error.detach().to("cpu", self.dtype)
        count = self._counts[grid]
        if count < self.capacity:
            row = count
            self._counts[grid] = count + 1
        else:
            row = self._most_similar_row(stored, self._norms[grid], error)
        stored[row] = error
        self._norms[grid][row] = error.float().square().sum()
        return row

    def draw(self, grid: int | None, generator: torch.Generator) -> torch.Tensor | None:
        """A copy of one stored error `error_shape` (storage dtype), uniform over the errors of `grid`, or over all
        stored errors when `grid` is None (so fuller grids are drawn more often); None if there is none."""
        if grid is not None:
            count = self._counts[grid]
            return None if count == 0 else self._grids[grid][self._uniform_index(count, generator)].clone()
        total = sum(self._counts)
        if total == 0:
            return None
        index = self._uniform_index(total, generator)
        grid = 0
        while index >= self._counts[grid]:
            index -= self._counts[grid]
            grid += 1
        return self._grids[grid][index].clone()

    @staticmethod
    def _uniform_index(count: int, generator: torch.Generator) -> int:
        return int(torch.randint(count, (1,), generator=generator))

    def _grid_storage(self, grid: int) -> torch.Tensor:
        """The `[capacity, *error_shape]` storage of a grid, allocated on first use."""
        if not 0 <= grid < self.num_grids:
            raise IndexError(f"bank {self.name!r} has grids 0..{self.num_grids - 1}, got {grid}")
        if self._grids[grid] is None:
            self._norms[grid] = torch.zeros(self.capacity, dtype=torch.float32)
            shape = (self.capacity, *self.error_shape)
            if self.storage_dir is None:
                self._grids[grid] = torch.empty(shape, dtype=self.dtype)
            else:
                path = self.storage_dir / f"{self.name}-grid{grid:03d}.bin"
                # A file left by an earlier run holds stale rows: start from an empty one.
                path.unlink(missing_ok=True)
                self._grids[grid] = torch.from_file(
                    str(path), shared=True, size=math.prod(shape), dtype=self.dtype
                ).view(shape)
        return self._grids[grid]

    @staticmethod
    def _most_similar_row(stored: torch.Tensor, norms: torch.Tensor, error: torch.Tensor) -> int:
        """The row of `stored` `[n, ...]` nearest to `error` in L2 distance (the first on a tie).

        ‖s − e‖² = ‖s‖² − 2 s·e + ‖e‖²: the dot products of every row come from one matrix-vector product in the
        storage dtype (13x faster than subtracting row by row in float32 at Z=500 on 2 CPU threads, see
        `bench/error_bank_store.py`), which ranks the rows to within its rounding; the `REFINED_CANDIDATES` best
        are then measured exactly.
        """
        flat = stored.reshape(stored.shape[0], -1)
        target = error.reshape(-1)
        approximate = norms - 2 * (flat @ target).float()
        candidates = approximate.topk(min(REFINED_CANDIDATES, len(approximate)), largest=False).indices.sort().values
        exact = (flat[candidates].float() - target.float()).square().sum(dim=1)
        return int(candidates[exact.argmin()])

    # ---- checkpoints -----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """`counts` (int64 `[num_grids]`) and `errors.<grid>` (`[count, *error_shape]`) for every non-empty grid.

        A full grid's tensor is its storage itself, not a copy (a full bank is ~100 GB): write the state before the
        next `store`. Partly filled grids are copied, so that `torch.save` does not write their empty rows.
        """
        state = {"counts": torch.tensor(self._counts, dtype=torch.int64)}
        for grid, count in enumerate(self._counts):
            if count:
                rows = self._grids[grid][:count]
                state[f"errors.{grid}"] = rows if count == self.capacity else rows.clone()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the errors and counts of `state_dict()`; raises ValueError if they do not fit this bank."""
        if "counts" not in state:
            raise ValueError(f"bank {self.name!r}: the state has no 'counts' (keys: {sorted(state)})")
        counts = [int(c) for c in state["counts"]]
        if len(counts) != self.num_grids:
            raise ValueError(f"bank {self.name!r} has {self.num_grids} grids, the state has {len(counts)}")
        if max(counts) > self.capacity:
            raise ValueError(
                f"bank {self.name!r} holds {self.capacity} errors per grid, the state has {max(counts)}: resume with "
                "the same errors_per_grid and memory budget"
            )
        expected = {"counts"} | {f"errors.{g}" for g, count in enumerate(counts) if count}
        if set(state) != expected:
            raise ValueError(f"bank {self.name!r}: state keys {sorted(set(state) ^ expected)} do not match its counts")
        for grid, count in enumerate(counts):
            if count:
                rows = state[f"errors.{grid}"]
                if tuple(rows.shape) != (count, *self.error_shape):
                    raise ValueError(
                        f"bank {self.name!r}, grid {grid}: expected {count} errors of shape {list(self.error_shape)}, "
                        f"got {list(rows.shape)}"
                    )
                self._grid_storage(grid)[:count] = rows
                for row in range(count):
                    self._norms[grid][row] = self._grids[grid][row].float().square().sum()
        self._counts = counts

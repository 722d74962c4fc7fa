"""The Gittins index of a program's attained service, learned from the programs that ended.

Least attained service (PLAS, ATLAS) is the best size-oblivious order when
program sizes vary a lot (few long programs hold most of the work: the
program that has run longest is the one most likely to run longer still).
When programs are alike in size it is the worst: it shares the engine among
them, so all of them finish late, where serving the oldest first finishes
most of them sooner. The Gittins index policy is the order that is best for
the mean in both cases (optimal among policies that do not know a job's size,
for a single server): for a program that has received ``a`` of service, with
``S`` the size of a program,

    G(a) = max over d > 0 of  P(S - a <= d | S > a) / E[min(S - a, d) | S > a]

(the best rate, in completions per unit of service, at which spending up to
``d`` more on it finishes it), and the program with the largest index runs
first. Where the sizes' hazard rate decreases the index falls as a program is
served and the order is least attained service; where it increases the index
rises and the order is nearest to done first.

:class:`ProgramSizes` keeps the sizes of the last ``window`` programs that
ended (their final service in the scheduler's unit) and the index over a
grid of attained service, rebuilt as sizes arrive.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from itertools import accumulate

# Points of attained service the index is tabulated at: this many quantiles of the sizes
# seen (where the index jumps) and as many evenly spaced up to the largest (where it glides).
GRID_POINTS = 48
# A table costs GRID_POINTS * 2 passes over the window: rebuilt when this fraction is new.
REBUILD_FRACTION = 16


def gittins_index(sizes: list[float], prefix: list[float], attained: float) -> float:
    """``G(attained)`` for the empirical distribution of ``sizes`` (sorted ascending).

    ``prefix[i]`` is the sum of ``sizes[:i]``. With no size above ``attained``
    (a program longer than every one seen) it returns 0; :class:`ProgramSizes`
    tabulates such points with the last value below the largest size instead.
    """
    n = len(sizes)
    first = bisect_right(sizes, attained)
    best = 0.0
    k = first
    while k < n:
        # Spend up to sizes[k] - attained more: the programs up to and including size
        # sizes[k] finish, every longer one receives exactly that much.
        last = bisect_right(sizes, sizes[k], k) - 1  # ties finish together
        done = last - first + 1
        spent = prefix[last + 1] - prefix[first] - done * attained
        spent += (n - 1 - last) * (sizes[last] - attained)
        # every program left receives at least what the shortest one needs (the sums above
        # can round below it when attained is close to a size)
        spent = max(spent, (n - first) * (sizes[first] - attained))
        best = max(best, done / spent)
        k = last + 1
    return best


class ProgramSizes:
    """The sizes of recently ended programs and their Gittins index table."""

    def __init__(self, window: int, min_programs: int) -> None:
        if window < 1 or not 1 <= min_programs <= window:
            raise ValueError("need window >= 1 and 1 <= min_programs <= window")
        self.min_programs = min_programs
        self._recent: deque[float] = deque(maxlen=window)
        self._grid: list[float] = []
        self._index: list[float] = []
        self._new = 0  # sizes observed since the table was built
        self.median = 0.0  # of the sizes in the table

    def __len__(self) -> int:
        return len(self._recent)

    @property
    def ready(self) -> bool:
        """A table is built: enough programs had ended at the last :meth:`refresh`."""
        return bool(self._index)

    def observe(self, size: float) -> None:
        """A program ended having received ``size`` of service (programs with none are ignored)."""
        if size > 0:
            self._recent.append(size)
            self._new += 1

    def refresh(self) -> bool:
        """Rebuild the table once the sizes seen since the last one are a sixteenth of the
        window's (every one while it fills); True if it changed."""
        seen = len(self._recent)
        if seen < self.min_programs or self._new < max(1, seen // REBUILD_FRACTION):
            return False
        self._new = 0
        sizes = sorted(self._recent)
        prefix = [0.0, *accumulate(sizes)]
        n = len(sizes)
        top = sizes[-1]
        quantiles = {sizes[(i * (n - 1)) // (GRID_POINTS - 1)] for i in range(GRID_POINTS)}
        even = {top * i / GRID_POINTS for i in range(GRID_POINTS)}
        grid = sorted(quantiles | even)
        index = [gittins_index(sizes, prefix, a) for a in grid[:-1]]
        index.append(index[-1])  # past the largest size seen: its last observed value
        self._grid, self._index = grid, index
        self.median = sizes[n // 2]
        return True

    def index(self, attained: float) -> float:
        """The tabulated ``G`` at the grid point at or below ``attained`` (call :meth:`refresh` first)."""
        i = bisect_right(self._grid, attained) - 1
        return self._index[max(i, 0)]

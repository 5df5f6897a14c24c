"""Post-scan fine alignment: iterative reprojection on Dask, reconstruction-ready output.

:func:`align` refines the per-projection shifts a scan's drift log left (see
:mod:`.engine`); :mod:`.runners` runs its iterations serially, on a Dask cluster in memory,
or streamed from the HDF5 file through scratch files on disk (out-of-core: a 2048-projection
scan of 2048² frames within 24 GiB); :mod:`.io` reads Data Exchange projections and drift
logs and writes the aligned Data Exchange file and shift tables, :mod:`.cluster` opens a Dask
client and :mod:`.memory` sizes a run and picks the runner. The command line is
``tomolock align`` (:mod:`.cli`).
"""

from .cluster import dask_client
from .engine import (
    AlignConfig,
    AlignResult,
    IterationReport,
    align,
    gauge_basis,
    plan_levels,
    remove_gauge,
)
from .io import (
    ProjectionFile,
    initial_shifts_from_log,
    write_data_exchange,
    write_raw_data_exchange,
    write_shifts,
)
from .memory import MemoryEstimate, choose_executor, estimate_bytes, parse_bytes

__all__ = [
    "AlignConfig",
    "AlignResult",
    "IterationReport",
    "MemoryEstimate",
    "ProjectionFile",
    "align",
    "choose_executor",
    "dask_client",
    "estimate_bytes",
    "gauge_basis",
    "initial_shifts_from_log",
    "parse_bytes",
    "plan_levels",
    "remove_gauge",
    "write_data_exchange",
    "write_raw_data_exchange",
    "write_shifts",
]

"""Post-scan fine alignment: iterative reprojection on Dask, reconstruction-ready output.

:func:`align` refines the per-projection shifts a scan's drift log left (see
:mod:`.engine`), :mod:`.io` reads Data Exchange projections and drift logs and writes the
aligned Data Exchange file and shift tables, :mod:`.cluster` opens a Dask client and
:mod:`.memory` sizes a run. The command line is ``tomolock align`` (:mod:`.cli`).
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
from .memory import MemoryEstimate, estimate_bytes

__all__ = [
    "AlignConfig",
    "AlignResult",
    "IterationReport",
    "MemoryEstimate",
    "ProjectionFile",
    "align",
    "dask_client",
    "estimate_bytes",
    "gauge_basis",
    "initial_shifts_from_log",
    "plan_levels",
    "remove_gauge",
    "write_data_exchange",
    "write_raw_data_exchange",
    "write_shifts",
]

"""One call for a whole search into an output folder: the entry point of the CLI and quickstart.

The study lives in ``store`` (the measurement database; the CLI passes its ``--db``) under
``study_name`` (default: the output folder's name), or, without a store, in
``<out_dir>/study.db``. Running the same call again with the same settings resumes it (see
search/study.py for what resume guarantees); other settings raise StudyMismatchError instead
of mixing two searches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hwlat.profiler.store import Store
from hwlat.search.objectives import Objective
from hwlat.search.report import SearchReport, write_report
from hwlat.search.storage import SearchStorage
from hwlat.search.strategies.base import Strategy
from hwlat.search.study import Study

STUDY_FILE = "study.db"


def run_search(
    space: Any,
    objectives: Sequence[Objective],
    strategy: Strategy,
    budget: int,
    out_dir: str | Path,
    *,
    batch_size: int | None = None,
    top_k: int = 5,
    show_progress: bool = True,
    export_onnx: bool = True,
    store: Store | None = None,
    study_name: str | None = None,
    worker: str | None = None,
) -> tuple[Study, SearchReport]:
    """Check budgets, search ``budget`` architectures (resuming a stored run), write the report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = SearchStorage(store if store is not None else out_dir / STUDY_FILE)
    name = study_name or out_dir.resolve().name
    study = Study(
        space, objectives, strategy, storage=storage, name=name, batch_size=batch_size, worker=worker
    )
    study.optimize(budget, show_progress=show_progress)
    return study, write_report(study, out_dir, top_k=top_k, export_onnx=export_onnx)

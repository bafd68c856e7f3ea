"""The run history: each run recorded whole, each table's versions kept by content, and
what changed between two runs (`usher-pipeline runs`, `diff`, `history`, `show`, `gc`)."""

from usher_pipeline.history.store import (
    GcReport,
    History,
    HistoryError,
    RunNotFound,
    TableNotInHistory,
)

__all__ = ["GcReport", "History", "HistoryError", "RunNotFound", "TableNotInHistory"]

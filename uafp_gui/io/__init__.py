"""File formats of docs/dataset_format.md: raw datasets, importers, reconstruction results.

Pure numpy/tifffile/scipy; no torch and no Qt, so every layer (GUI, CLI, scripts) can use it.
"""

from uafp_gui.io.dataset import (
    Dataset,
    DatasetMeta,
    DatasetWriter,
    FrameSpec,
    Glass,
    PartialDatasetWarning,
    read_dataset,
    read_dataset_meta,
    write_dataset,
)
from uafp_gui.io.result import (
    Calibration,
    Result,
    load_calibration,
    read_result,
    save_calibration,
    write_result,
)

__all__ = [
    "Calibration",
    "Dataset",
    "DatasetMeta",
    "DatasetWriter",
    "FrameSpec",
    "Glass",
    "PartialDatasetWarning",
    "Result",
    "load_calibration",
    "read_dataset",
    "read_dataset_meta",
    "read_result",
    "save_calibration",
    "write_dataset",
    "write_result",
]

"""File formats of docs/dataset_format.md: raw datasets, importers, reconstruction results.

Pure numpy/tifffile/scipy; no torch and no Qt, so every layer (GUI, CLI, scripts) can use it.
"""

from uafp_gui.io.calibration import Calibration, load_calibration, save_calibration
from uafp_gui.io.dataset import Dataset, PartialDatasetWarning, read_dataset, read_dataset_meta
from uafp_gui.io.result import Result, read_result, write_result
from uafp_gui.io.schema import DatasetMeta, FrameSpec
from uafp_gui.io.writer import DatasetWriter, write_dataset

__all__ = [
    "Calibration",
    "Dataset",
    "DatasetMeta",
    "DatasetWriter",
    "FrameSpec",
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

"""Data for the compiler: sources that stream batches, metrics that score model outputs."""

from __future__ import annotations

from slimgraph.data.base import Batch, DataSource, Metric
from slimgraph.data.metrics import (
    F1,
    METRICS,
    Accuracy,
    Cosine,
    FunctionMetric,
    MacroF1,
    MeanSquaredError,
    MetricConfig,
)
from slimgraph.data.sources import (
    SOURCE_CONFIGS,
    ArraysConfig,
    CustomConfig,
    IdxConfig,
    ImageFolderConfig,
    SourceConfig,
    TsvConfig,
    expand_path,
    parse_source,
)

__all__ = [
    "F1",
    "METRICS",
    "SOURCE_CONFIGS",
    "Accuracy",
    "ArraysConfig",
    "Batch",
    "Cosine",
    "CustomConfig",
    "DataSource",
    "FunctionMetric",
    "IdxConfig",
    "ImageFolderConfig",
    "MacroF1",
    "MeanSquaredError",
    "Metric",
    "MetricConfig",
    "SourceConfig",
    "TsvConfig",
    "expand_path",
    "parse_source",
]

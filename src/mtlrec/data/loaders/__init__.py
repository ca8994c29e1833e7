"""Built-in dataset loaders; importing this package registers them."""

from mtlrec.data.loaders import census_income, synthetic, tabular
from mtlrec.data.loaders.base import (
    DatasetInfo,
    DatasetLoader,
    RawDataset,
    get_dataset,
    list_datasets,
    register_dataset,
)

__all__ = [
    "DatasetInfo",
    "DatasetLoader",
    "RawDataset",
    "census_income",
    "get_dataset",
    "list_datasets",
    "register_dataset",
    "synthetic",
    "tabular",
]

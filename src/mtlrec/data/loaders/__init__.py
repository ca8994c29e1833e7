"""Built-in dataset loaders; importing this package imports every module in it, and each registers its loader."""

import importlib
import pkgutil

from mtlrec.data.loaders.base import (
    DatasetInfo,
    DatasetLoader,
    RawDataset,
    get_dataset,
    list_datasets,
    register_dataset,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "DatasetInfo",
    "DatasetLoader",
    "RawDataset",
    "get_dataset",
    "list_datasets",
    "register_dataset",
]

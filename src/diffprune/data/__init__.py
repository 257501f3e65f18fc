"""Datasets: ``load_dataset(spec)`` returns an ``ImageDataset`` of uint8 N x C x H x W images."""
from diffprune.data.config import DataConfig, LatentConfig
from diffprune.data.dataset import ImageDataset
from diffprune.data.decode import DatasetError
from diffprune.data.kind import DataKind, LoadOptions
from diffprune.data.sources import DATA_KINDS, available_datasets, load_dataset, register_data_kind

__all__ = ["DATA_KINDS", "DataConfig", "DataKind", "LatentConfig", "DatasetError", "ImageDataset", "LoadOptions",
           "available_datasets", "load_dataset", "register_data_kind"]

"""Datasets: ``load_dataset(spec)`` returns an ``ImageDataset`` of uint8 N x C x H x W images."""
from diffprune.data.config import DataConfig, LatentConfig
from diffprune.data.dataset import ImageDataset
from diffprune.data.sources import DatasetError, available_datasets, load_dataset

__all__ = ["DataConfig", "LatentConfig", "DatasetError", "ImageDataset", "available_datasets", "load_dataset"]

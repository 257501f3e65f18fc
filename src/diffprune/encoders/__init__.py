"""Stage 1: frozen surrogate encoders and dataset embedding (``features.npy`` + ``meta.json``).

    from diffprune.encoders import get_encoder, available_encoders, EmbedConfig, embed_dataset, load_fid_inception
"""
from diffprune.encoders.base import Encoder, EncoderError
from diffprune.encoders.config import EmbedConfig
from diffprune.encoders.embed import EmbedInterrupted, embed_dataset
from diffprune.encoders.fid_inception import FidInception, load_fid_inception
from diffprune.encoders.registry import ENCODERS, EncoderEntry, available_encoders, get_encoder, register_encoder

__all__ = [
    "ENCODERS",
    "EncoderEntry",
    "EmbedConfig",
    "EmbedInterrupted",
    "Encoder",
    "EncoderError",
    "FidInception",
    "available_encoders",
    "embed_dataset",
    "get_encoder",
    "load_fid_inception",
    "register_encoder",
]

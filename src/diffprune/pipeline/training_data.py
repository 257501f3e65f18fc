"""What the stages train on: the coreset of each selection (labelled by its groups) or all the data, and in
latent runs their VAE latents, read from the run's one latent cache (``latents/``: each image encoded at most
once). Built once per selection: the reference, DRO and training stages all ask for it."""
from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np

from diffprune.config import ConfigError
from diffprune.data import ImageDataset
from diffprune.data.latents import LatentCache, load_vae
from diffprune.io import folder_lock, hash_arrays
from diffprune.pipeline.config import FULL, ArmConfig
from diffprune.pipeline.stages import Pending, distributed
from diffprune.runtime import resolve_device


class TrainingData:
    """The training sets of a ``Pipeline`` (``pipe``: its dataset, selections, layout and console)."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self._sets: dict[str, tuple[ImageDataset, str]] = {}

    def of_arm(self, arm: ArmConfig) -> tuple[ImageDataset, str]:
        """What an arm trains on (the coreset, labelled by its groups; latents in a latent run) and its
        fingerprint.

        Built once per arm: the reference, DRO and training stages all ask for it."""
        if arm.method == FULL:
            return self.full()
        name = self.pipe.selection_name(arm)
        if name not in self._sets:
            sel, fp = self.pipe.select(arm)
            labels, names = sel.groups[sel.indices], list(sel.group_names)
            self._check_no_group_emptied(arm, labels, names)
            if self.pipe.cfg.latent is not None:
                self._sets[name] = self._latents(sel.indices, labels, names, fp)
            else:
                data = self.pipe.dataset
                ds = ImageDataset(data.images[sel.indices], labels, names, name=f"{data.name}[{name}]")
                self._sets[name] = (ds, fp)
        return self._sets[name]

    def full(self) -> tuple[ImageDataset, str]:
        """Every training image (or its latent) and the fingerprint."""
        missing = self.pipe.dry_data_missing()
        if missing is not None:
            self.pipe.console.print(f"data      unknown until loaded ({missing})", markup=False, highlight=False)
            raise Pending("data", self.pipe.cfg.data.spec, "load")
        if self.pipe.cfg.latent is None:
            return self.pipe.dataset, self.pipe.dataset.fingerprint
        if FULL not in self._sets:
            ds = self.pipe.dataset
            labels = ds.labels if ds.labels is not None else np.zeros(len(ds), dtype=np.int64)
            self._sets[FULL] = self._latents(np.arange(len(ds)), labels, list(ds.class_names) or ["all"],
                                                    ds.fingerprint)
        return self._sets[FULL]

    @cached_property
    def latent_cache(self) -> tuple[LatentCache, Any]:
        """The run's VAE latent cache (``latents/<vae>-<dtype>``) and its VAE; runs with a ``latent`` section."""
        lc = self.pipe.cfg.latent
        vae = load_vae(lc.vae, device=resolve_device(lc.device))
        return LatentCache.open(self.pipe.layout.latents(lc), self.pipe.dataset, lc.vae, vae, dtype=lc.dtype), vae

    def _latents(self, indices: np.ndarray, labels: np.ndarray, names: list[str], fp: str):
        """The latents of ``indices`` (encoded now if the cache lacks any) labelled ``labels``, and their
        fingerprint (the images' fingerprint + the VAE's identity, so gigabytes of latents are never hashed)."""
        cache, vae = self.latent_cache
        vae_spec = self.pipe.cfg.latent.vae
        missing = len(cache.missing(indices))
        if missing:
            if self.pipe.dry_run:
                self.pipe.console.print(f"[bold]{'run':<7}[/] latents   {missing} images to encode with {vae_spec}")
                raise Pending("latents", str(cache.path), "run")
            if distributed()[0] > 1:
                raise RuntimeError(
                    f"{missing} of the {len(indices)} images this stage needs are not in the latent cache yet and "
                    f"encoding does not run under several processes; run it first without accelerate launch "
                    f"(e.g. `diffprune reweight ...` or `diffprune run ...`), then launch again"
                )
            self.pipe.console.print(f"[bold cyan]{'encode':<7}[/] latents   {missing} images with {vae_spec}")
            with folder_lock(cache.path, wait=True, what=f"latent cache {cache.path}"):
                cache.ensure(self.pipe.dataset, indices, vae, batch_size=self.pipe.cfg.latent.batch_size,
                             progress=self.pipe.progress)
        meta = cache.meta
        key = hash_arrays(np.frombuffer(f"{fp}|{meta['vae_weights_hash']}|{meta['dtype']}".encode(), np.uint8))
        ds = cache.dataset(indices, labels=labels, class_names=names, fingerprint=key)
        return ds, key

    def _check_no_group_emptied(self, arm: ArmConfig, labels: np.ndarray, names: list[str]) -> None:
        """The rule for groups that selection empties: DRO would give them weight that no image carries and a
        conditional model would sample them untrained, so such an arm stops (an unconditional arm without DRO
        just trains on the groups it kept)."""
        empty = [name for k, name in enumerate(names) if not np.any(labels == k)]
        if empty and (arm.reweight or self.pipe.train_config(arm).conditional):
            uses = "DRO" if arm.reweight else "the conditional model"
            raise ConfigError(
                f"arm {arm.label()}: selection keeps no image of {len(empty)} group(s) ({', '.join(empty[:8])}), "
                f"which {uses} needs; raise select.ratio, select per class (select.per_class=true) or group by "
                f"clusters (--clusters N)")

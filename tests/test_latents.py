"""Latents: the tiny VAE, encode/decode against diffusers by hand, and the resumable LatentCache."""
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffprune.data import ImageDataset  # noqa: E402
from diffprune.data.latents import (  # noqa: E402
    LatentCache,
    LatentDataset,
    LatentError,
    decode_latents,
    encode_images,
    load_vae,
    tiny_random_vae,
    vae_downsample_factor,
)
from diffprune.io import hash_arrays  # noqa: E402


def _dataset(n=12, c=3, size=8, seed=0, classes=("a", "b", "c")):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, c, size, size), dtype=np.uint8)
    return ImageDataset(images, rng.integers(0, len(classes), n), list(classes), name="toy")


@pytest.fixture(scope="module")
def vae():
    return load_vae("tiny-random:1")


class _Counting:
    """Wraps ``vae.encode`` to count encoded images and optionally fail at call number ``fail_at``."""

    def __init__(self, vae, fail_at=None):
        self.vae, self.images, self.calls, self.fail_at = vae, 0, 0, fail_at
        self.encode = vae.encode

    def __enter__(self):
        def encode(x):
            self.calls += 1
            if self.fail_at is not None and self.calls == self.fail_at:
                raise RuntimeError("simulated crash")
            self.images += len(x)
            return self.encode(x)

        self.vae.encode = encode
        return self

    def __exit__(self, *exc):
        del self.vae.encode  # back to the class method


def test_tiny_vae_is_seeded_and_downsamples_by_two():
    a, b, c = load_vae("tiny-random:3"), load_vae("tiny-random:3"), load_vae("tiny-random")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert not all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    assert all(torch.equal(v, tiny_random_vae(0).state_dict()[k]) for k, v in c.state_dict().items())
    assert vae_downsample_factor(a) == 2 and not a.training
    assert not any(p.requires_grad for p in a.parameters())
    with pytest.raises(LatentError, match="tiny-random:SEED"):
        load_vae("tiny-random:x")


def test_encode_and_decode_match_diffusers_by_hand():
    vae = tiny_random_vae(2).eval()
    vae.register_to_config(scaling_factor=0.5, shift_factor=0.1)
    images = _dataset(n=5).images
    x = torch.from_numpy(images).float() / 127.5 - 1
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mean
        expected = ((mean - 0.1) * 0.5).numpy()
    z = encode_images(vae, images, batch_size=2)
    assert z.dtype == np.float32 and z.shape == (5, 4, 4, 4)
    np.testing.assert_allclose(z, expected, rtol=0, atol=1e-6)

    from diffprune.diffusion.sampling import to_uint8

    with torch.no_grad():
        pixels = to_uint8(vae.decode(torch.from_numpy(expected) / 0.5 + 0.1).sample).numpy()
    out = decode_latents(vae, z, 0.5, 0.1, channels=3, batch_size=2)
    assert out.dtype == np.uint8 and out.shape == (5, 8, 8, 3)
    assert np.abs(out.astype(int) - pixels.astype(int)).max() <= 1  # batching may move a value across .5
    assert (out == pixels).mean() > 0.99
    np.testing.assert_array_equal(decode_latents(vae, z), decode_latents(vae, z, 0.5, 0.1))  # config defaults


def test_grey_images_encode_as_rgb_and_decode_as_the_channel_mean(vae):
    grey = _dataset(n=3, c=1).images
    np.testing.assert_allclose(encode_images(vae, grey), encode_images(vae, np.repeat(grey, 3, axis=1)), atol=1e-6)
    z = encode_images(vae, grey)
    with torch.no_grad():
        x = vae.decode(torch.from_numpy(z) / vae.config.scaling_factor).sample.mean(dim=1, keepdim=True)
    expected = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = decode_latents(vae, z, channels=1)
    assert out.shape == (3, 8, 8, 1)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1


def test_cache_encodes_only_missing_indices(tmp_path, vae):
    ds = _dataset(n=12)
    cache = LatentCache.open(tmp_path / "c", ds, "tiny-random:1", vae, dtype="float32")
    a, b = np.array([0, 3, 5, 7]), np.array([1, 5, 9, 10, 11])
    with _Counting(vae) as count:
        cache.ensure(ds, a, vae, batch_size=3, chunk_size=3, progress=False)
        assert count.images == 4
        cache.ensure(ds, np.union1d(a, b), vae, batch_size=3, chunk_size=3, progress=False)
        assert count.images == 4 + 4  # 5 was already done
        cache.ensure(ds, a, vae, progress=False)
        assert count.images == 8
    assert cache.num_done == 8 and set(np.flatnonzero(cache.done)) == set(np.union1d(a, b))
    idx = np.union1d(a, b)
    np.testing.assert_allclose(cache.latents[idx], encode_images(vae, ds.images[idx]), rtol=0, atol=1e-6)


def test_crash_keeps_finished_chunks_and_resume_completes(tmp_path, vae):
    ds = _dataset(n=10)
    cache = LatentCache.open(tmp_path / "c", ds, "tiny-random:1", vae, dtype="float32")
    with _Counting(vae, fail_at=2), pytest.raises(RuntimeError, match="simulated crash"):
        cache.ensure(ds, None, vae, batch_size=4, chunk_size=4, progress=False)
    reopened = LatentCache.open(tmp_path / "c", ds, "tiny-random:1", vae, dtype="float32")
    np.testing.assert_array_equal(reopened.done, np.arange(10) < 4)
    with _Counting(vae) as count:
        reopened.ensure(ds, None, vae, batch_size=4, chunk_size=4, progress=False)
    assert count.images == 6 and reopened.num_done == 10
    np.testing.assert_allclose(reopened.latents, encode_images(vae, ds.images), rtol=0, atol=1e-6)


def test_reopen_with_another_dataset_or_vae_is_refused_unless_recreate(tmp_path, vae):
    ds = _dataset(n=6)
    cache = LatentCache.open(tmp_path / "c", ds, "tiny-random:1", vae)
    cache.ensure(ds, [0, 1], vae, progress=False)
    assert LatentCache.open(tmp_path / "c", ds, "tiny-random:1", vae).num_done == 2  # same inputs: reused
    other = _dataset(n=6, seed=1)
    with pytest.raises(LatentError, match="dataset_fingerprint"):
        LatentCache.open(tmp_path / "c", other, "tiny-random:1", vae)
    with pytest.raises(LatentError, match="vae_weights_hash"):
        LatentCache.open(tmp_path / "c", ds, "tiny-random:5", load_vae("tiny-random:5"))
    with pytest.raises(LatentError, match="dtype"):
        LatentCache.open(tmp_path / "c", ds, "tiny-random:1", vae, dtype="float32")
    with pytest.raises(LatentError, match="not the one cached"):
        cache.ensure(other, [2], vae, progress=False)
    fresh = LatentCache.open(tmp_path / "c", other, "tiny-random:1", vae, recreate=True)
    assert fresh.num_done == 0 and fresh.meta["dataset_fingerprint"] == other.fingerprint


def test_latent_dataset_and_subset(tmp_path, vae):
    ds = _dataset(n=8, c=1)
    cache = LatentCache.open(tmp_path / "c", ds, "tiny-random:1", vae)
    with pytest.raises(LatentError, match="not encoded yet"):
        cache.dataset([0, 1])
    cache.ensure(ds, [6, 2, 4], vae, progress=False)
    lat = cache.dataset(np.array([6, 2, 4]))
    assert isinstance(lat, LatentDataset) and len(lat) == 3
    assert lat.images.dtype == np.float16 and lat.images.shape == (3, 4, 4, 4)
    assert (lat.resolution, lat.channels, lat.image_channels, lat.num_classes) == (4, 4, 1, 3)
    assert lat.scaling_factor == pytest.approx(vae.config.scaling_factor) and lat.shift_factor == 0.0
    assert lat.vae_spec == "tiny-random:1" and lat.class_names == ["a", "b", "c"]
    np.testing.assert_array_equal(lat.labels, ds.labels[[6, 2, 4]])
    np.testing.assert_allclose(lat.images, encode_images(vae, ds.images[[6, 2, 4]]).astype(np.float16), atol=1e-3)
    assert lat.fingerprint == hash_arrays(lat.images, lat.labels)
    sub = lat.subset(np.array([2, 0]))
    np.testing.assert_array_equal(sub.images, lat.images[[2, 0]])
    np.testing.assert_array_equal(sub.labels, ds.labels[[4, 6]])
    assert sub.fingerprint != lat.fingerprint and sub.vae_spec == lat.vae_spec


def test_local_vae_dirs_and_clear_errors(tmp_path):
    vae = tiny_random_vae(4)
    vae.save_pretrained(tmp_path / "vae_only")
    vae.save_pretrained(tmp_path / "sd" / "vae")
    for spec in (tmp_path / "vae_only", tmp_path / "sd"):
        loaded = load_vae(str(spec))
        assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in vae.state_dict().items())
    vae.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    with pytest.raises(LatentError, match="safetensors"):
        load_vae(tmp_path / "pickled")
    with pytest.raises(LatentError, match="holds no AutoencoderKL"):
        load_vae(tmp_path)
    with pytest.raises(LatentError, match="HF_HUB_OFFLINE") as info:
        load_vae("stabilityai/sd-vae-ft-ema")
    assert info.value.__suppress_context__ and "local" in str(info.value)
    with pytest.raises(LatentError, match="multiple of 2"):
        LatentCache.open(tmp_path / "c", _dataset(n=2, size=7), "tiny-random", load_vae("tiny-random"))

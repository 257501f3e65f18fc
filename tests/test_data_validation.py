"""Bad data is refused or converted by a stated rule, never silently coerced (issue 16, item 4).

Each refusal runs through the real CLI entry point and must end in one ``error:`` line naming the file and the
offending class or value; the conversions are checked against the images themselves.
"""
import warnings

import numpy as np
import pytest
from PIL import Image

from diffprune.data import DatasetError, load_dataset
from tests.test_failures import _sets, cli, one_line_error


def _folder(root, spec: dict[str, list[tuple[str, int]]]):
    """An ImageFolder: {class: [(mode, grey value)]} of 4 x 4 images, saved as PNG."""
    for cls, images in spec.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i, (mode, v) in enumerate(images):
            colour = {"L": v, "RGB": (v, v, v), "RGBA": (v, v, v, 255)}[mode]
            Image.new(mode, (4, 4), colour).save(root / cls / f"{i}.png")
    return root


def test_mixed_grey_rgb_rgba_folder_is_decoded_as_rgb_with_a_warning_or_grey_when_asked(tmp_path):
    root = _folder(tmp_path / "mixed", {"a": [("L", 10), ("RGB", 20)], "b": [("RGBA", 30), ("L", 40)]})
    with pytest.warns(UserWarning, match=r"2 grey and 2 colour images; decoding all as RGB.*data.channels=1"):
        rgb = load_dataset(f"imagefolder:{root}")
    assert rgb.images.shape == (4, 3, 4, 4)
    # the rule: grey copied to the 3 channels, alpha dropped; the value of every file survives
    np.testing.assert_array_equal(rgb.images[:, :, 0, 0], np.repeat([[10], [20], [30], [40]], 3, axis=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit choice is not warned about
        grey = load_dataset(f"imagefolder:{root}", channels=1)
    assert grey.images.shape == (4, 1, 4, 4)
    np.testing.assert_array_equal(grey.images[:, 0, 0, 0], [10, 20, 30, 40])


def test_all_grey_folder_stays_grey_even_when_the_first_file_is_not_representative(tmp_path):
    # the probe reads every header: a colour file that is not first still makes the folder RGB
    root = _folder(tmp_path / "late", {"a": [("L", 1), ("L", 2)], "b": [("L", 3), ("RGB", 4)]})
    with pytest.warns(UserWarning, match="1 colour"):
        assert load_dataset(f"imagefolder:{root}").images.shape[1] == 3
    root = _folder(tmp_path / "grey", {"a": [("L", 1)], "b": [("L", 3)]})
    assert load_dataset(f"imagefolder:{root}").images.shape[1] == 1


def test_empty_class_folder_is_refused_with_its_name(tmp_path, monkeypatch, capsys):
    root = _folder(tmp_path / "data", {"cat": [("L", 1), ("L", 2)], "dog": [("L", 3), ("L", 4)]})
    (root / "empty_class").mkdir()
    code, err = cli(monkeypatch, capsys, "embed", "--no-progress",
                    *_sets(tmp_path / "runs", f"data.spec=imagefolder:{root}"))
    one_line_error(code, err, "'empty_class'", "hold no images", str(root))


def test_npz_class_without_images_is_refused_with_its_name(tmp_path, monkeypatch, capsys):
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 0, 2, 2]),
             class_names=np.array(["zero", "one", "two"]))
    code, err = cli(monkeypatch, capsys, "embed", "--no-progress", *_sets(tmp_path / "runs", f"data.spec=npz:{path}"))
    one_line_error(code, err, "classes without images: one", str(path))


@pytest.mark.parametrize("labels, refused", [([0.5, 1.5, 0.0, 1.0], True), ([0.0, 1.0, 0.0, 1.0], False)])
def test_npz_float_labels_are_refused_unless_whole_numbers(tmp_path, monkeypatch, capsys, labels, refused):
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((4, 8, 8), np.uint8), labels=np.array(labels))
    if refused:
        code, err = cli(monkeypatch, capsys, "embed", "--no-progress",
                        *_sets(tmp_path / "runs", f"data.spec=npz:{path}"))
        one_line_error(code, err, "labels must be integer class ids", "0.5", str(path))
    else:
        np.testing.assert_array_equal(load_dataset(f"npz:{path}").labels, [0, 1, 0, 1])  # exact, not truncated


def test_npz_labels_truncated_never(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((2, 8, 8), np.uint8), labels=np.array([1.0000001, 0.0]))
    with pytest.raises(DatasetError, match="integer class ids"):
        load_dataset(f"npz:{path}")


def test_a_ratio_keeping_fewer_than_two_images_per_class_warns(tmp_path, monkeypatch, capsys):
    # 40 digits = 4 per class; ratio 0.1 keeps 1 of each (at least 1 per class): every class is named
    code, err = cli(monkeypatch, capsys, "select", "--no-progress", *_sets(tmp_path / "runs", "select.ratio=0.1"))
    assert code == 0, err
    assert "keeps fewer than 2 images of 10 group(s)" in " ".join(err.split()), err
    code, err = cli(monkeypatch, capsys, "select", "--no-progress", *_sets(tmp_path / "runs", "select.ratio=0.5"))
    assert code == 0 and "fewer than 2" not in err, err

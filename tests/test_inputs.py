"""Reading a user's data files: real images, tensors and arrays, and never unpickling."""

import numpy as np
import pytest
import torch
from experiments.data import uci_digits
from PIL import Image

from netcompress.cli.inputs import batches, read_data


def test_folder_of_real_digit_images(tmp_path):
    digits = uci_digits().test_x[:5].reshape(-1, 28, 28)
    for i, image in enumerate(digits):
        Image.fromarray((image.numpy() * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    x = read_data(tmp_path)
    assert x.shape == (5, 3, 28, 28)
    np.testing.assert_allclose(x[:, 0].numpy(), digits.numpy(), atol=1 / 255 + 1e-6)
    assert read_data(tmp_path, image_size=(14, 20)).shape == (5, 3, 14, 20)


def test_tensor_and_array_files(tmp_path):
    x = torch.randn(6, 4)
    torch.save({"x": x, "labels": torch.arange(6)}, tmp_path / "d.pt")
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=np.arange(6))
    np.save(tmp_path / "d.npy", x.numpy())
    for name in ("d.pt", "d.npz", "d.npy"):
        torch.testing.assert_close(read_data(tmp_path / name), x)
    assert [b.shape[0] for b in batches(read_data(tmp_path / "d.npy"), 4)] == [4, 2]


class _Payload:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(_Payload.target),))


def test_pickled_objects_are_never_executed(tmp_path):
    _Payload.target = str(tmp_path / "pwned")
    torch.save(_Payload(), tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="cannot be read as .pt data"):
        read_data(tmp_path / "evil.pt")
    np.save(tmp_path / "evil.npy", np.array([_Payload()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="cannot be read as .npy data"):
        read_data(tmp_path / "evil.npy")
    assert not (tmp_path / "pwned").exists()


def test_unusable_inputs(tmp_path):
    with pytest.raises(ValueError, match="must be a .pt, .npy or .npz file"):
        (tmp_path / "d.csv").write_text("1,2")
        read_data(tmp_path / "d.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        read_data(tmp_path / "empty")
    with pytest.raises(ValueError, match="holds no samples"):
        batches(torch.zeros(0, 3), 2)

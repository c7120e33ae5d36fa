"""--decode gpu: its wiring and CPU fallback here, the worker side (JPEG bytes), and the device-side pad + resize."""


import numpy as np
import pytest
from PIL import Image

from library.backends.gpu_decode import JpegBytesLoader, gpu_decode_unavailable, pad_resize
from library.files.image_io import ImageLoadError
from library.taggers.preprocess import SquareImageLoader, square_rgb_uint8
from tests.conftest import SCRIPT, run_script
from tests.fixtures.images import real_photos


def test_decode_gpu_falls_back_to_the_cpu_with_one_warning_and_the_same_tags(tmp_path, model_dir):
    if gpu_decode_unavailable() is None:
        pytest.skip("GPU decoding is available here: the fallback is not taken")
    data = tmp_path / "data"
    real_photos(data, n=3)
    common = [data, "--repo_id", "org/tiny", "--model_dir", model_dir, "--max_data_loader_n_workers", "1"]
    cpu = run_script(SCRIPT, *common, "--output_path", tmp_path / "cpu.json", cwd=tmp_path)
    gpu = run_script(SCRIPT, *common, "--output_path", tmp_path / "gpu.json", "--decode", "gpu", cwd=tmp_path)
    assert cpu.returncode == 0 and gpu.returncode == 0, gpu.stderr
    assert gpu.stderr.count("--decode gpu:") == 1 and "decoding on the CPU instead" in gpu.stderr
    assert (tmp_path / "cpu.json").read_text() == (tmp_path / "gpu.json").read_text()
    assert run_script(SCRIPT, *common, "--decode", "tpu", cwd=tmp_path).returncode == 2


def test_workers_ship_jpeg_bytes_and_decode_everything_else(tmp_path):
    photos = real_photos(tmp_path, n=2)  # astronaut.png, coffee.jpg
    cpu = SquareImageLoader(64)
    loader = JpegBytesLoader(cpu)
    (kind, data), size = loader(photos[1])
    assert kind == "jpeg" and data == photos[1].read_bytes() and size == Image.open(photos[1]).size
    (kind, array), size = loader(photos[0])
    assert kind == "rgb" and np.array_equal(array, cpu(photos[0])[0]) and size == Image.open(photos[0]).size
    cmyk = tmp_path / "cmyk.jpg"
    Image.open(photos[1]).convert("CMYK").save(cmyk)
    assert loader(cmyk)[0][0] == "rgb"  # Pillow's CMYK handling stays the reference
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(photos[1].read_bytes()[:500])
    with pytest.raises(ImageLoadError):
        loader(broken)


def test_device_pad_and_resize_follow_the_reference_geometry(tmp_path):
    torch = pytest.importorskip("torch")
    photo = real_photos(tmp_path, n=2)[1]
    img = Image.open(photo).convert("RGB").resize((300, 200))
    tensor = torch.from_numpy(np.asarray(img).copy())
    same_size = pad_resize([tensor], 300)[0].numpy()
    assert np.array_equal(same_size, square_rgb_uint8(img, 300))  # padding alone is exact
    for size in (64, 448):
        ours = pad_resize([tensor], size)[0].numpy().astype(int)
        reference = square_rgb_uint8(img, size).astype(int)
        diff = np.abs(ours - reference)
        assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4, (size, diff.mean(), diff.max())

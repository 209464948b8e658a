"""`config.init.pretrained='imagenet'`: download (127.0.0.1 only), hash check, conversion
once, reuse; the errors when offline or without PyTorch.

The "release" is a PyTorch state_dict with the tiny model's backbone shapes, written
with torch and named `NAME-<its own sha256 prefix>.pth`, so the real hash check and the
real conversion run; `RELEASES` points the IBN-a backbone to it and `FSAF_WEIGHTS_URL`
to the local server.
"""

import hashlib
import io
import sys

import numpy as np
import pytest

from configs import tiny
from fsaf_jax import convert_ibn, imagenet_weights
from fsaf_jax.core import download
from fsaf_jax.models import pretrained
from tests.reference.local_http import FileServer, refused_url

torch = pytest.importorskip("torch")


def _tiny_release(config) -> tuple[dict[str, np.ndarray], bytes]:
  """A state_dict (PyTorch keys and layouts) for every backbone entry of `config.model`."""
  entries, _ = convert_ibn.model_entries(config.model, tuple(config.input.image_size))
  rng = np.random.default_rng(0)
  state = {}
  for path, spec in entries.items():
    key = convert_ibn.torch_key(path)
    if key is None or path[2:][-2] == "mhsa" or any(p.startswith("eca") for p in path):
      continue
    shape = spec.shape
    torch_shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape
    value = rng.standard_normal(torch_shape).astype(np.float32)
    state[key] = np.abs(value) + 0.5 if key.endswith("running_var") else value
  buffer = io.BytesIO()
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, buffer)
  return state, buffer.getvalue()


@pytest.fixture
def release(monkeypatch, tmp_path):
  """(config asking for 'imagenet', state_dict, release name, server) with the cache in tmp."""
  config = tiny.get_config()
  config.init.pretrained = imagenet_weights.IMAGENET
  state, data = _tiny_release(config)
  name = f"tiny_ibn_a-{hashlib.sha256(data).hexdigest()[:8]}.pth"
  monkeypatch.setitem(
    imagenet_weights.RELEASES, "resnet50_ibn_a", imagenet_weights.Release(name, "unused")
  )
  monkeypatch.setenv(imagenet_weights.CACHE_ENV, str(tmp_path / "cache"))
  with FileServer({name: data}) as server:
    monkeypatch.setenv(imagenet_weights.URL_ENV, server.base)
    yield config, state, name, server


def test_imagenet_is_downloaded_checked_converted_once_and_reused(release, tmp_path):
  config, state, name, server = release
  resolved = imagenet_weights.resolve_config(config)
  path = resolved.init.pretrained
  assert config.init.pretrained == "imagenet"  # the caller's config is not changed
  assert path.startswith(str(tmp_path / "cache")) and path.endswith(".msgpack")
  loaded = pretrained.load_pretrained(path)
  # Independent of the converter's table: the conv kernel OIHW -> HWIO by hand, the IN
  # affine and a BN running variance as they were saved.
  backbone = loaded["params"]["backbone"]
  np.testing.assert_array_equal(
    backbone["conv1"]["kernel"], state["conv1.weight"].transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(
    backbone["layer1_0"]["bn1"]["IN"]["scale"], state["layer1.0.bn1.IN.weight"]
  )
  np.testing.assert_array_equal(
    loaded["batch_stats"]["backbone"]["layer2_1"]["bn3"]["var"], state["layer2.1.bn3.running_var"]
  )
  source = tmp_path / "cache" / name
  assert loaded["metadata"]["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
  assert loaded["metadata"]["source_sha256"].startswith(download.hash_prefix(name))
  assert server.requests == [name]
  # Reused: no request, no conversion (the converted file is not rewritten).
  mtime = (tmp_path / "cache").joinpath(path.rsplit("/", 1)[1]).stat().st_mtime_ns
  assert imagenet_weights.resolve_config(config).init.pretrained == path
  assert server.requests == [name]
  assert (tmp_path / "cache").joinpath(path.rsplit("/", 1)[1]).stat().st_mtime_ns == mtime


def test_offline_is_one_error_with_url_cache_path_and_manual_steps(release, monkeypatch, tmp_path):
  config, _, name, _ = release
  url = refused_url(name)
  monkeypatch.setenv(imagenet_weights.URL_ENV, url.rsplit("/", 1)[0])
  with pytest.raises(download.DownloadError) as e:
    imagenet_weights.resolve_config(config)
  message = str(e.value)
  assert url in message and str(tmp_path / "cache" / name) in message and "\n" not in message
  assert "python -m fsaf_jax.convert_ibn" in e.value.hint
  assert list((tmp_path / "cache").iterdir()) == []


def test_without_pytorch_the_error_says_how_to_install_the_cpu_build(release, monkeypatch):
  config, _, name, _ = release
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
  with pytest.raises(imagenet_weights.errors.UserError) as e:
    imagenet_weights.resolve_config(config)
  assert convert_ibn.TORCH_INSTALL in str(e.value) and "\n" not in str(e.value)
  assert name in str(e.value)  # the release is downloaded (and kept: it was verified)


def test_release_per_backbone():
  config = tiny.get_config()
  assert imagenet_weights.release_for(config.model).file_name == "resnet50_ibn_a-d9d0bb7b.pth"
  config.model.ibn_stages = ()
  assert imagenet_weights.release_for(config.model).file_name == "resnet50-0676ba61.pth"
  url = imagenet_weights.release_url(imagenet_weights.RELEASES["resnet50"])
  assert url == "https://download.pytorch.org/models/resnet50-0676ba61.pth"


def test_unresolved_imagenet_reaching_the_library_is_a_clear_error():
  with pytest.raises(pretrained.PretrainedError, match="resolve_config"):
    pretrained.load_pretrained("imagenet")

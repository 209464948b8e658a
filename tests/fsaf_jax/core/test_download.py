"""`download_verified` against a local server (127.0.0.1 only): good, corrupt, dropped,
cached, offline."""

import hashlib

import pytest

from fsaf_jax.core import download
from tests.reference.local_http import FileServer, refused_url

DATA = bytes(range(256)) * 4096  # 1 MiB: several read chunks
SHA = hashlib.sha256(DATA).hexdigest()
GOOD = f"weights-{SHA[:8]}.pth"
CORRUPT = f"corrupt-{SHA[:8]}.pth"  # served with one byte changed


def _leftovers(folder):
  return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def server():
  bad = bytearray(DATA)
  bad[1000] ^= 1
  with FileServer({GOOD: DATA, CORRUPT: bytes(bad), f"cut-{SHA[:8]}.pth": DATA}) as s:
    s.drop.add(f"cut-{SHA[:8]}.pth")
    yield s


def test_hash_prefix_follows_the_torch_hub_name_convention():
  assert download.hash_prefix("resnet50_ibn_a-d9d0bb7b.pth") == "d9d0bb7b"
  assert download.hash_prefix("resnet50-0676ba61.pth") == "0676ba61"
  with pytest.raises(ValueError, match="carries no SHA-256 prefix"):
    download.hash_prefix("resnet50.pth")


def test_good_file_is_downloaded_once_then_served_from_the_cache(server, tmp_path):
  dest = tmp_path / "cache" / GOOD
  assert download.download_verified(server.url(GOOD), dest) == dest
  assert dest.read_bytes() == DATA
  assert _leftovers(dest.parent) == [GOOD]  # no temporary file left
  assert server.requests == [GOOD]
  assert download.download_verified(server.url(GOOD), dest) == dest
  assert server.requests == [GOOD]  # the cache hit made no request


def test_hash_mismatch_keeps_nothing_and_names_url_and_path(server, tmp_path):
  dest = tmp_path / CORRUPT
  with pytest.raises(download.DownloadError) as e:
    download.download_verified(server.url(CORRUPT), dest, manual="then convert it")
  message = str(e.value)
  assert server.url(CORRUPT) in message and str(dest) in message
  assert f"does not start with {SHA[:8]}" in message
  assert "\n" not in message and "then convert it" in e.value.hint
  assert _leftovers(tmp_path) == []


def test_dropped_connection_keeps_no_partial_file(server, tmp_path):
  name = f"cut-{SHA[:8]}.pth"
  dest = tmp_path / name
  with pytest.raises(download.DownloadError, match="cannot download .*cut-") as e:
    download.download_verified(server.url(name), dest)
  assert str(dest) in str(e.value)
  assert _leftovers(tmp_path) == []
  # The next attempt downloads again (nothing half-written was taken for the file).
  server.drop.clear()
  download.download_verified(server.url(name), dest)
  assert dest.read_bytes() == DATA


def test_offline_is_one_error_naming_url_path_and_manual_steps(tmp_path):
  url = refused_url(GOOD)
  dest = tmp_path / GOOD
  with pytest.raises(download.DownloadError) as e:
    download.download_verified(url, dest, manual="then run the converter")
  assert url in str(e.value) and str(dest) in str(e.value) and "\n" not in str(e.value)
  assert f"download {url} by hand to {dest}" in e.value.hint
  assert _leftovers(tmp_path) == []

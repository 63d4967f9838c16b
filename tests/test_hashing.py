"""Content hashes: a model folder's fingerprint changes when its weights do, without reading them."""

import os

from pipeline.hashing import HF_DOWNLOAD_RECORDS, folder_fingerprint

BIG = 2 << 20  # over the 1 MiB below which files are hashed whole


def weights(folder, fill: bytes) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text('{"dim": 16}')
    (folder / "model.safetensors").write_bytes(fill * BIG)


def test_a_retrained_weight_file_of_the_same_size_changes_the_fingerprint(tmp_path):
    weights(tmp_path / "model", b"a")
    before = folder_fingerprint(tmp_path / "model")
    assert folder_fingerprint(tmp_path / "model") == before
    weights(tmp_path / "model", b"b")  # same name, same size, other content (and a newer modification time)
    os.utime(tmp_path / "model" / "model.safetensors", ns=(1, 10**18))
    assert folder_fingerprint(tmp_path / "model") != before


def test_a_downloaded_file_is_identified_by_the_hash_hugging_face_recorded(tmp_path):
    folder = tmp_path / "model"
    weights(folder, b"a")
    record = folder / HF_DOWNLOAD_RECORDS / "model.safetensors.metadata"
    record.parent.mkdir(parents=True)
    record.write_text("commit\nsha256-of-a\n1700000000\n")
    before = folder_fingerprint(folder)
    os.utime(folder / "model.safetensors", ns=(1, 10**18))  # copied around: only the time changed
    assert folder_fingerprint(folder) == before
    record.write_text("commit\nsha256-of-b\n1700000000\n")  # another download
    assert folder_fingerprint(folder) != before

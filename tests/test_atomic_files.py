"""Atomic writes: a crash at any moment leaves whole files and folders, never half-written ones."""

from pathlib import Path

import pytest

from svi_model.atomic_files import place_file, replace_folder, write_text_atomic


def folder_with(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / "weights.txt").write_text(text)
    return path


def test_replacing_a_folder_keeps_the_new_one_and_leaves_nothing_else(tmp_path):
    final = folder_with(tmp_path / "lora", "old")
    replace_folder(folder_with(tmp_path / "lora.partial", "new"), final)
    assert (final / "weights.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora"]


def test_a_crash_between_the_renames_keeps_both_folders_whole(tmp_path, monkeypatch):
    final = folder_with(tmp_path / "lora", "old")
    staged = folder_with(tmp_path / "lora.partial", "new")
    renames = []
    real = Path.rename

    def crash_on_the_second(self, target):
        renames.append(self.name)
        if len(renames) == 2:
            raise OSError("power cut")
        return real(self, target)

    monkeypatch.setattr(Path, "rename", crash_on_the_second)
    with pytest.raises(OSError, match="power cut"):
        replace_folder(staged, final)
    assert (tmp_path / ".lora.replaced" / "weights.txt").read_text() == "old"
    assert (staged / "weights.txt").read_text() == "new"


def test_placing_a_file_again_leaves_no_temporary_file(tmp_path):
    write_text_atomic(tmp_path / "store" / "clip.mkv", "frames")
    place_file(tmp_path / "store" / "clip.mkv", tmp_path / "run" / "clip.mkv")
    place_file(tmp_path / "store" / "clip.mkv", tmp_path / "run" / "clip.mkv")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["clip.mkv"]
    assert (tmp_path / "run" / "clip.mkv").read_text() == "frames"

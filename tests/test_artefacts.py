"""Artefacts a user or a crash may have damaged: manifests, checkpoints, half-swapped folders."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from har_vit.core.checkpoint import TRUST, load_checkpoint, save_checkpoint
from har_vit.core.errors import ArtefactError
from har_vit.core.io import file_entry, read_manifest, staged_folder, write_manifest, write_text


def _manifest(folder, **over):
    write_text(folder / "a.txt", "x")
    body = {"stage": "ingest", "created": "now", "outputs": [file_entry(folder / "a.txt")], "inputs": [],
            "records_total": 1, "records_kept": 1, "records_quarantined": {}, "class_names": ["A"], **over}
    (folder / "manifest.json").write_text(json.dumps(body))


@pytest.mark.parametrize("over,needle", [
    ({"outputs": []}, "outputs is empty"),
    ({"outputs": "a.txt"}, "outputs is str, expected list"),
    ({"outputs": [{"path": "a.txt"}]}, "outputs[0] is not {path, bytes, sha256}"),
    ({"records_total": "many"}, "records_total is str, expected int"),
    ({"class_names": None}, "class_names is NoneType, expected list"),
    ({"records_kept": True}, "records_kept is bool, expected int"),
])
def test_structurally_wrong_manifest_is_one_line_naming_each_problem(tmp_path, over, needle):
    _manifest(tmp_path, **over)
    with pytest.raises(ArtefactError) as e:
        read_manifest(tmp_path, "ingest")
    assert needle in str(e.value) and "manifest.json" in str(e.value) and "\n" not in str(e.value)


def test_missing_keys_are_listed(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"stage": "train"}))
    with pytest.raises(ArtefactError, match="created missing; outputs missing; run_id missing"):
        read_manifest(tmp_path, "train")


def test_a_checkpoint_without_integrity_needs_trust(tmp_path):
    torch.save({"model": {}, "model_name": "tiny"}, tmp_path / "x.pt")  # as a hand-made file would be
    with pytest.raises(ArtefactError, match="no integrity digest.*--trust"):
        load_checkpoint(tmp_path / "x.pt")
    token = TRUST.set(True)
    try:
        assert load_checkpoint(tmp_path / "x.pt")["model_name"] == "tiny"
    finally:
        TRUST.reset(token)
    save_checkpoint(tmp_path / "y.pt", {"model": {}, "model_name": "tiny"})
    assert load_checkpoint(tmp_path / "y.pt")["model_name"] == "tiny"


def test_a_failed_stage_keeps_the_old_folder_and_leaves_nothing(tmp_path):
    final = tmp_path / "stage"
    with staged_folder(final) as d:
        write_text(d / "a.txt", "old")
        write_manifest(d, "x", outputs=[file_entry(d / "a.txt")])
    before = {p.name: p.read_bytes() for p in final.iterdir()}
    assert str(final) in (final / "manifest.json").read_text() and ".tmp-" not in (final / "manifest.json").read_text()
    with pytest.raises(RuntimeError):
        with staged_folder(final) as d:
            write_text(d / "a.txt", "new")
            raise RuntimeError("the stage failed")
    assert {p.name: p.read_bytes() for p in final.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]


def test_leftovers_of_killed_stages_are_cleaned_and_a_half_swap_is_undone(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid that has exited
    final = tmp_path / "stage"
    (tmp_path / f".stage.tmp-{dead}-abcdef").mkdir()  # killed while building
    old = tmp_path / f".stage.old-{dead}-abcdef"  # killed between the two renames of a swap
    old.mkdir()
    write_text(old / "a.txt", "the good result")
    mine = tmp_path / f".stage.tmp-{os.getpid()}-aaaaaa"  # a live process's: left alone
    mine.mkdir()
    with staged_folder(final) as d:
        assert (final / "a.txt").read_text() == "the good result"  # put back before anything else
        write_text(d / "a.txt", "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name, "stage"]
    assert (final / "a.txt").read_text() == "new"


def test_temporary_files_of_killed_writes_are_removed_when_the_stage_restarts(tmp_path):
    from har_vit.core.io import begin_stage

    (tmp_path / ".last.pt.k3j2h1.tmp").write_bytes(b"\0" * 1000)  # what kill -9 mid-write leaves
    (tmp_path / "keep.txt").write_text("a user's file")
    begin_stage(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_half_stored_runs_of_killed_processes_are_removed_by_the_next_store(tmp_path):
    from har_vit.core.registry import _clean_stale_stores

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / f".run-a.tmp-{dead}").mkdir()
    (tmp_path / f".run-b.tmp-{os.getpid()}").mkdir()  # this process's, in progress: kept
    _clean_stale_stores(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [f".run-b.tmp-{os.getpid()}"]

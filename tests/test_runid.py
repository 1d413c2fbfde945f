"""Run ids: unique across calls and processes, sortable by time, one format everywhere."""
from __future__ import annotations

import multiprocessing as mp

from har_vit.core.runid import PATTERN, new_run_id


def test_ten_thousand_in_a_loop_are_unique_sorted_and_well_formed():
    ids = [new_run_id("npz", "tiny", "subject") for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # the time prefix advances every call
    assert all(PATTERN.match(i) for i in ids)
    assert ids[0].endswith("-npz-tiny-subject")


def _batch(n: int) -> list[str]:
    return [new_run_id("p") for _ in range(n)]


def test_eight_processes_at_once_never_collide():
    ctx = mp.get_context("spawn")  # fresh interpreters: nothing shared but the clock
    with ctx.Pool(8) as pool:
        batches = pool.map(_batch, [2_000] * 8)
    ids = [i for b in batches for i in b]
    assert len(set(ids)) == len(ids) == 16_000


def test_labels_are_sanitised_to_a_plain_folder_name():
    rid = new_run_id("a/b", "../x", None, "", "ok")
    assert PATTERN.match(rid) and rid.split("-")[4:] == ["a_b", "x", "ok"]

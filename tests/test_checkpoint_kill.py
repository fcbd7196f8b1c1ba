"""SIGKILL a real training subprocess inside its checkpoint saves, and check that what is on
disk always loads, resumes and continues bit for bit as a run that was never killed.

The fast version of benchmarks/kill_checkpoints.py (which does 100+ random kills): one kill
paused at each named point of a save (before/after the companion's fsync and rename, the
model file's fsync and rename, the clean-up), and a few at random instants.
"""

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))
from benchmarks.kill_checkpoints import POINTS, run  # noqa: E402


@pytest.mark.slow
def test_sigkill_inside_saves_always_leaves_a_resumable_pair(tmp_path):
    summary = run(kills=4, points=True, work=str(tmp_path), seed=1)
    assert summary["kills"] == len(POINTS) + 4
    assert summary["unresumable"] == 0 and summary["mismatched"] == 0, summary["failures"]
    # the kills did land inside saves: with a temporary file present, and between renames
    assert summary["landed"].get("inside a file write (temporary file present)", 0) >= 2
    assert summary["landed"].get("between the companion's rename and the clean-up", 0) >= 2

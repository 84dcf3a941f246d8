"""Process-wide settings the package makes before torch loads, and how its commands end."""

import os
import subprocess
import sys

import pytest

PROBE = "import os, spkidd; print(os.environ['OMP_WAIT_POLICY'])"


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_threads_wait_passively_unless_the_user_says_otherwise(given: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == expected


EXIT_PROBE = """
import gc, sys
from spkidd.cli import main
sys.argv = ["spkidd", "--version"]
try:
    main()
except SystemExit as done:
    print(done.code, gc.get_freeze_count() > 0)
"""


def test_a_command_leaves_its_objects_out_of_the_last_garbage_collections() -> None:
    done = subprocess.run([sys.executable, "-c", EXIT_PROBE], capture_output=True, text=True, check=True)
    assert done.stdout.split()[-2:] == ["0", "True"]

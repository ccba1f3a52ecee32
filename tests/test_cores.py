"""usable_cores follows the CPU affinity mask (SLURM's cpuset, taskset), not the machine."""
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_usable_cores_is_the_affinity_mask():
    one_core = min(os.sched_getaffinity(0))
    code = (f"import os; os.sched_setaffinity(0, {{{one_core}}}); "
            "from pipeline.data.cores import usable_cores; print(usable_cores())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    assert out.strip() == "1"

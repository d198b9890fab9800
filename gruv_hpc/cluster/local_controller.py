"""A local job's controller: submitit's own, which also records how each task's process ended.

submitit's local ``Controller`` starts a job's task processes, waits for them and then drops
their exit codes: it exits 0 whatever happened. A task killed by a signal (SIGKILL from the
kernel's OOM killer, or ``kill -9``) leaves no result, no traceback and no error.txt, and was
reported as UNKNOWN with its last log line. Only this process, their parent, sees how they
ended, so it writes that down: ``<job_id>_exit.json`` beside the job's logs (``exit_path``), one
Popen return code per task (negative: killed by that signal; None: still running at the time
limit). ``LocalScheduler.ended`` reads it.

Started by ``local.LocalScheduler`` as ``python -m gruv_hpc.cluster.local_controller FOLDER``
with submitit's environment (the job's command, tasks, time limit), in place of
``python -m submitit.local._local FOLDER``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from submitit.local.local import Controller

from gruv_hpc.cluster.local import exit_path
from gruv_hpc.fsio import atomic_write_json


class RecordingController(Controller):
    def wait(self, freq: int = 24):
        codes = super().wait(freq)
        # Written after every start (a requeued start overwrites it): the last one is the job's.
        atomic_write_json(exit_path(self.folder, self.pid), {"exit_codes": list(codes), "time": time.time()})
        return codes


if __name__ == "__main__":
    RecordingController(Path(sys.argv[1])).run()

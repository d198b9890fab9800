"""The Slurm output parsers, from output recorded on the local cluster (Slurm 22.05): no cluster needed."""
import os

from gruv_hpc.cluster import slurm
from gruv_hpc.cluster.slurm import JobInfo, expand_array_id, parse_max_array_size, parse_sacct, parse_squeue

# sacct -n -P -X --duplicates -o JobID,State,ExitCode, over a sweep's life: a 4-run array, runs
# cancelled, a preempted run (REQUEUED, then its second start), an array with a failed task.
SACCT_SWEEP = """\
45704263_0|COMPLETED|0:0
45704263_1|COMPLETED|0:0
45704263_2|COMPLETED|0:0
45704263_3|COMPLETED|0:0
45704268|CANCELLED by 0|0:0
45704269|COMPLETED|0:0
45704267|CANCELLED by 0|0:0
45704271|REQUEUED|0:0
45704272|COMPLETED|0:0
45704271|COMPLETED|0:0
45704273_0|COMPLETED|0:0
45704273_1|FAILED|1:0
"""

# An array task requeued (scontrol requeue 45704288_0) while its siblings ran: at once (the task,
# pending again, shows under the array's bare id, and the running siblings are not listed yet), and after.
SACCT_REQUEUE_NOW = """\
45704288|PENDING|0:0
45704288_0|REQUEUED|0:0
"""
SACCT_REQUEUE_AFTER = """\
45704288_0|REQUEUED|0:0
45704288_1|COMPLETED|0:0
45704288_2|COMPLETED|0:0
45704288_0|COMPLETED|0:0
"""

# sbatch --array=0-3,7%1: one task running, the rest pending as one row; then all cancelled.
SACCT_PENDING_ARRAY = """\
45704278_0|RUNNING|0:0
45704278_[1-3,7%1]|PENDING|0:0
"""
SACCT_CANCELLED_ARRAY = """\
45704278_0|CANCELLED by 0|0:0
45704278_[1-3,7%1]|CANCELLED by 0|0:0
"""
SQUEUE = """\
45704278_[1-3,7%1]|PENDING
45704278_0|RUNNING
"""

SCONTROL_CONFIG = """\
Configuration data as of 2024-05-02T10:11:12
AccountingStorageBackupHost = (null)
AccountingStorageEnforce = none
Licenses                = (null)
LogTimeFormat           = iso8601_ms
MailDomain              = (null)
MailProg                = /bin/true
MaxArraySize            = 1001
MaxDBDMsgs              = 20004
MaxJobCount             = 10000
MaxJobId                = 67043328
MaxMemPerNode           = UNLIMITED
"""


def test_expand_array_id():
    assert expand_array_id("123_[4-7%2]") == ["123_4", "123_5", "123_6", "123_7"]
    assert expand_array_id("45704278_[1-3,7%1]") == ["45704278_1", "45704278_2", "45704278_3", "45704278_7"]
    assert expand_array_id("123_[0,2]") == ["123_0", "123_2"]
    assert expand_array_id("123_5") == ["123_5"] and expand_array_id("123") == ["123"]


def test_sacct_states_requeues_and_exit_codes():
    res = parse_sacct(SACCT_SWEEP)
    assert res["45704263_2"] == JobInfo("COMPLETED", 0, "0:0")
    assert res["45704268"] == JobInfo("CANCELLED", 0, "0:0")  # "CANCELLED by 0": by uid 0
    assert res["45704271"] == JobInfo("COMPLETED", 1, "0:0")  # its last row is its state now
    assert res["45704273_1"] == JobInfo("FAILED", 0, "1:0")
    assert len(res) == 11


def test_sacct_requeued_array_task():
    now = parse_sacct(SACCT_REQUEUE_NOW)
    assert now["45704288_0"] == JobInfo("REQUEUED", 1, "0:0") and now["45704288_0"].state in slurm.ACTIVE
    assert parse_sacct(SACCT_REQUEUE_AFTER) == {"45704288_0": JobInfo("COMPLETED", 1, "0:0"),
                                                 "45704288_1": JobInfo("COMPLETED", 0, "0:0"),
                                                 "45704288_2": JobInfo("COMPLETED", 0, "0:0")}


def test_sacct_pending_and_cancelled_array():
    res = parse_sacct(SACCT_PENDING_ARRAY)
    assert res["45704278_0"].state == "RUNNING"
    assert {j: i.state for j, i in res.items() if j != "45704278_0"} == {f"45704278_{i}": "PENDING" for i in (1, 2, 3, 7)}
    assert {i.state for i in parse_sacct(SACCT_CANCELLED_ARRAY).values()} == {"CANCELLED"}


def test_sacct_odd_lines():
    assert parse_sacct("") == {}
    assert parse_sacct("\n  \nnot sacct output\n") == {}
    assert parse_sacct("77||") == {"77": JobInfo("UNKNOWN", 0, "")}
    assert parse_sacct("77|COMPLETED|0:0|\n") == {"77": JobInfo("COMPLETED", 0, "0:0")}  # -p ends lines with |


def test_squeue():
    assert parse_squeue(SQUEUE) == {"45704278_0": "RUNNING", **{f"45704278_{i}": "PENDING" for i in (1, 2, 3, 7)}}
    assert parse_squeue("") == {} and parse_squeue("slurm_load_jobs error: Invalid job id specified\n") == {}


def test_max_array_size():
    assert parse_max_array_size(SCONTROL_CONFIG) == 1001
    assert parse_max_array_size("MaxArraySize = 0\n") == 0  # arrays disabled: one run per job
    assert parse_max_array_size("MaxJobCount = 10000\n") is None and parse_max_array_size("MaxArraySize = x") is None


def test_job_states_asks_squeue_for_what_sacct_lacks(tmp_path, monkeypatch):
    """The glue, with sacct and squeue replaced by scripts that print recorded output."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "calls"
    for name, text in (("sacct", SACCT_REQUEUE_NOW), ("squeue", "45704288_2|RUNNING\n45704288_1|RUNNING\n")):
        (bin_ / name).write_text(f"#!/bin/sh\necho {name} \"$@\" >> {log}\ncat <<'EOF'\n{text}EOF\n")
        (bin_ / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    res = slurm.job_states(["45704288_0", "45704288_1", "45704288_2"])
    assert res["45704288_0"] == JobInfo("REQUEUED", 1, "0:0")
    assert res["45704288_1"] == res["45704288_2"] == JobInfo("RUNNING")
    calls = log.read_text().splitlines()
    assert calls == ["sacct -n -P -X --duplicates -j 45704288 -o JobID,State,ExitCode",
                     "squeue -h -j 45704288 -o %i|%T"]  # one call each, whatever the number of runs
    assert slurm.job_states([]) == {}

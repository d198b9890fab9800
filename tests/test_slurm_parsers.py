"""The Slurm output parsers, from output recorded on the local cluster (Slurm 22.05): no cluster needed."""
import os

from gruv_hpc.cluster import slurm
from gruv_hpc.cluster.slurm import JobInfo, expand_array_id, merge_states, parse_max_array_size, parse_sacct, parse_squeue

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
45704278_[1-3,7%1]|PENDING|Resources
45704278_0|RUNNING|None
"""

# squeue -h -j IDS -o '%i|%T|%r' beside sacct -n -P -X --duplicates -j IDS -o JobID,State,ExitCode,
# asked one right after the other on the local cluster (issue 21).
# (a) Pending with reasons: a job held (sbatch --hold) and an array behind it (-d afterok:HELD);
# and an array of 4 tasks of 2 CPUs on the 2-CPU node, just submitted, then with task 0 started.
SQUEUE_HELD = """\
46491404_[0-2]|PENDING|Dependency
46491403|PENDING|JobHeldUser
"""
SACCT_HELD = """\
46491403|PENDING|0:0
46491404_[0-2]|PENDING|0:0
"""
SQUEUE_ARRAY_NEW = """\
46491400_[0-3]|PENDING|None
"""
SQUEUE_ARRAY_FIRST = """\
46491400_[1-3]|PENDING|Resources
46491400_0|RUNNING|None
"""
# (b) The stale record: task 0 ended and task 1 started; squeue runs task 1 while sacct still holds
# the array's old pending row "46491400_[1-3]" (for about 3 s here; longer on a busy slurmdbd).
SQUEUE_STALE = """\
46491400_[2-3]|PENDING|Resources
46491400_1|RUNNING|None
"""
SACCT_STALE = """\
46491400_0|COMPLETED|0:0
46491400_[1-3]|PENDING|0:0
"""
# (c) scontrol requeue of a running job: at once (squeue COMPLETING, sacct's only row REQUEUED),
# pending again (BeginTime: Slurm holds a requeued job a few seconds), then running again.
SQUEUE_REQUEUE_STOPPING = "46491405|COMPLETING|None\n"
SACCT_REQUEUE_STOPPING = "46491405|REQUEUED|0:0\n"
SQUEUE_REQUEUE_PENDING = "46491405|PENDING|BeginTime\n"
SACCT_REQUEUE_PENDING = "46491405|REQUEUED|0:0\n46491405|PENDING|0:0\n"
SQUEUE_REQUEUE_RUNNING = "46491405|RUNNING|None\n"
SACCT_REQUEUE_RUNNING = "46491405|REQUEUED|0:0\n46491405|RUNNING|0:0\n"

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
    assert parse_squeue(SQUEUE) == {"45704278_0": JobInfo("RUNNING"),
                                    **{f"45704278_{i}": JobInfo("PENDING", reason="Resources") for i in (1, 2, 3, 7)}}
    assert parse_squeue("") == {} and parse_squeue("slurm_load_jobs error: Invalid job id specified\n") == {}
    assert parse_squeue("77|RUNNING\n78||\n") == {"77": JobInfo("RUNNING")}  # no reason column; no state: skipped


def test_pending_reasons():
    """(a) A pending job says why it waits; an array's pending tasks all say it."""
    res = merge_states(parse_sacct(SACCT_HELD), parse_squeue(SQUEUE_HELD))
    assert res["46491403"] == JobInfo("PENDING", 0, "0:0", "JobHeldUser")
    assert {res[f"46491404_{i}"] for i in range(3)} == {JobInfo("PENDING", 0, "0:0", "Dependency")}
    assert parse_squeue(SQUEUE_ARRAY_NEW)["46491400_3"] == JobInfo("PENDING")  # "None": not decided yet
    first = merge_states({}, parse_squeue(SQUEUE_ARRAY_FIRST))  # not in accounting yet
    assert first["46491400_0"] == JobInfo("RUNNING") and first["46491400_2"].reason == "Resources"


def test_running_task_is_never_shown_pending_from_a_stale_record():
    """(b) The issue's "PENDING 75/100, checkpoint age 0 s": squeue's RUNNING wins over sacct's old row."""
    acct = parse_sacct(SACCT_STALE)
    assert acct["46491400_1"].state == "PENDING"  # what status used to show
    res = merge_states(acct, parse_squeue(SQUEUE_STALE))
    assert res["46491400_0"] == JobInfo("COMPLETED", 0, "0:0")  # ended: squeue no longer lists it
    assert res["46491400_1"] == JobInfo("RUNNING", 0, "0:0", "")
    assert {res[f"46491400_{i}"] for i in (2, 3)} == {JobInfo("PENDING", 0, "0:0", "Resources")}
    assert [i.state for i in res.values()].count("RUNNING") == 1


def test_requeued_job_state_and_count():
    """(c) A requeue: squeue's live state at each moment, sacct's count of requeues throughout."""
    stopping = merge_states(parse_sacct(SACCT_REQUEUE_STOPPING), parse_squeue(SQUEUE_REQUEUE_STOPPING))
    assert stopping["46491405"] == JobInfo("COMPLETING", 1, "0:0")
    pending = merge_states(parse_sacct(SACCT_REQUEUE_PENDING), parse_squeue(SQUEUE_REQUEUE_PENDING))
    assert pending["46491405"] == JobInfo("PENDING", 1, "0:0", "BeginTime")
    running = merge_states(parse_sacct(SACCT_REQUEUE_RUNNING), parse_squeue(SQUEUE_REQUEUE_RUNNING))
    assert running["46491405"] == JobInfo("RUNNING", 1, "0:0")
    ended = merge_states(parse_sacct(SACCT_REQUEUE_RUNNING.replace("RUNNING", "COMPLETED")), {})
    assert ended["46491405"] == JobInfo("COMPLETED", 1, "0:0")


def test_max_array_size():
    assert parse_max_array_size(SCONTROL_CONFIG) == 1001
    assert parse_max_array_size("MaxArraySize = 0\n") == 0  # arrays disabled: one run per job
    assert parse_max_array_size("MaxJobCount = 10000\n") is None and parse_max_array_size("MaxArraySize = x") is None


def test_job_states_asks_sacct_and_squeue_once(tmp_path, monkeypatch):
    """The glue, with sacct and squeue replaced by scripts that print recorded output."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "calls"

    def fake(name, text, rc=0):
        (bin_ / name).write_text(f"#!/bin/sh\necho {name} \"$@\" >> {log}\ncat <<'EOF'\n{text}EOF\nexit {rc}\n")
        (bin_ / name).chmod(0o755)
    fake("sacct", SACCT_STALE)
    fake("squeue", SQUEUE_STALE)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    res = slurm.job_states([f"46491400_{i}" for i in range(4)])
    assert [res[f"46491400_{i}"].state for i in range(4)] == ["COMPLETED", "RUNNING", "PENDING", "PENDING"]
    assert log.read_text().splitlines() == ["sacct -n -P -X --duplicates -j 46491400 -o JobID,State,ExitCode",
                                            "squeue -h -j 46491400 -o %i|%T|%r"]  # one call each, whatever the number of runs
    # Every id long gone from the controller: squeue fails ("Invalid job id specified"); sacct answers.
    fake("squeue", "slurm_load_jobs error: Invalid job id specified\n", rc=1)
    assert slurm.job_states(["46491400_1"])["46491400_1"].state == "PENDING"
    # No accounting: what squeue lists.
    fake("sacct", "sacct: error: Slurm accounting storage is disabled\n", rc=1)
    fake("squeue", SQUEUE_HELD)
    assert slurm.job_states(["46491403"]) == {"46491403": JobInfo("PENDING", reason="JobHeldUser"),
                                              **{f"46491404_{i}": JobInfo("PENDING", reason="Dependency") for i in range(3)}}
    assert slurm.job_states([]) == {}

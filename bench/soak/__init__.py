"""python -m bench.soak: crash consistency over a long run (`make soak`).

On its own local control plane, with the workspace simulator and the operator as processes, a seeded random
schedule creates, pauses, resumes, re-prompts, messages and deletes a few dozen tasks on three
TaskTemplates, changes and breaks those templates, makes agents fail, hang, talk garbage or go down, and
SIGKILLs the operator now and then. Then it evens out paused and running tasks, stops the faults, lets
everything settle and checks, as a user would from the API and the agents, that:

1. every task is in a phase that matches its pod and volume claim (and its status caught up with its
   spec), and none stayed unsettled for a minute during the run with nothing touching it;
2. no prompt reached an agent twice, and every Active task's prompt reached it;
3. every task paused after its prompt was delivered has its snapshot, or a SnapshotSkipped Event saying
   why; a paused task's snapshot holds the conversation as of its pause;
4. no Pod, PVC or ConfigMap is left of a deleted task, or adopted by a new one (each has its live task
   as controller owner, and none is older than it);
5. the operator never exited by itself, and its log holds no Traceback.

Everything it did goes to `ops.jsonl` in the run directory, the verdict to `report.json` and stdout; the
exit status is 1 when an invariant was broken. Three parts, marked below: the schedule and the checks are
pure functions of plain data; the shell (`Soak`) runs the processes, the operations and the observations.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
NAMESPACES = ("soak-a", "soak-b")
API = "/apis/taskpod.dev/v1alpha1"
TASK_LABEL = "taskpod.dev/task"
LIFETIME_LABEL = "taskpod.dev/lifetime"  # on a workspace pod: which of its task's pods it is (1, 2, ...)
SIM = "sim.taskpod.dev/agent"  # the simulated agent's behaviour (hack/agentsim/agent.py)
WAITING = "sim.taskpod.dev/container-waiting"  # kwok keeps such a pod's containers waiting (hack/localkube)
# Three kinds of agent: quick; slow to start and to answer; one that drops the answer to every message it
# takes (the operator must find its prompt in the log, not send it again), with no greeting.
BEHAVIOURS: dict[str, dict[str, Any]] = {
    "quick": {"work_seconds": 0.5},
    "slow": {"startup_seconds": 1, "init_seconds": 1, "work_seconds": 3, "reply_steps": 3},
    "flaky": {"work_seconds": 1, "post_delay_seconds": 0.5, "fail_after_accept": True, "greeting": None},
}
TEMPLATES = tuple(BEHAVIOURS)
AGENT_PATHS = ("/status", "/messages", "/message", "/events", "*")
OP_TIMEOUT = 15.0  # seconds any one call of an operation may take


def pod_name(task: str) -> str:
    """The name of a task's workspace pod (one at a time; each pod after a pause has it again)."""
    return f"{task}-0"


def claim_name(task: str) -> str:
    """The name of a task's workspace volume claim, which keeps its files across pauses."""
    return f"workspace-{task}-0"


def say(text: str) -> None:
    print(f"[soak {dt.datetime.now():%H:%M:%S}] {text}", file=sys.stderr, flush=True)

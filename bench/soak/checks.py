"""The soak's invariants, checked against what was observed at the end and what the run did (pure)."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from bench.soak import (
    LIFETIME_LABEL,
    TASK_LABEL,
    claim_name,
    pod_name,
)

INVARIANTS = {
    "phase": "every task in a phase that matches its pod and volume claim",
    "prompt": "each prompt delivered at most once (and an Active task's delivered)",
    "snapshot": "every pause with its snapshot or a SnapshotSkipped reason",
    "orphans": "no orphaned objects, no workspace of a deleted task",
    "operator": "the operator never crashed by itself; no Traceback in its log",
}


@dataclass(frozen=True)
class Violation:
    invariant: str
    task: str  # namespace/name, or what else it concerns
    seen: str


@dataclass
class Conversation:
    source: str  # "agent" (GET /messages), "state file", "state file of a deleted task"
    messages: list[dict[str, Any]]


@dataclass
class Observed:
    """What the API and the agents showed, as plain JSON objects."""

    tasks: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    claims: list[dict[str, Any]] = field(default_factory=list)
    configmaps: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # SnapshotSkipped ones
    conversations: dict[str, Conversation] = field(default_factory=dict)  # by namespace/name


@dataclass
class History:
    """What the run did that the checks need."""

    pauses: dict[str, list[float]] = field(default_factory=dict)  # task uid -> pause times (epoch s)
    prompts: set[str] = field(default_factory=set)  # every prompt text used
    broken: set[tuple[str, str]] = field(default_factory=set)  # (namespace, template) left broken
    crashes: list[str] = field(default_factory=list)  # operator exits the soak did not cause


def key_of(obj: dict[str, Any]) -> tuple[str, str]:
    return (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def who_of(obj: dict[str, Any]) -> str:
    return "/".join(key_of(obj))


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def iso(epoch: float | None) -> str:
    return (
        "?" if epoch is None else dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="milliseconds")
    )


def preview(content: str, width: int = 40) -> str:
    flat = content.replace("\n", "⏎")
    return json.dumps(flat if len(flat) <= width else flat[:width] + "…", ensure_ascii=False)


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def describe_pod(pod: dict[str, Any]) -> str:
    status = pod.get("status") or {}
    waiting = [
        (c.get("state") or {}).get("waiting", {}).get("reason")
        for c in status.get("containerStatuses") or []
        if (c.get("state") or {}).get("waiting")
    ]
    parts = [status.get("phase") or "no phase", "Ready" if _ready(pod) else "not Ready"]
    parts += [f"waiting: {w}" for w in waiting if w]
    if pod["metadata"].get("deletionTimestamp"):
        parts.append("being deleted")
    return ", ".join(parts)


def controller_uid(obj: dict[str, Any]) -> str | None:
    """The uid of the object's controller (its owner with controller: true), if it has one."""
    refs = obj["metadata"].get("ownerReferences") or []
    return next((r.get("uid") for r in refs if r.get("controller")), None)


def lifetime_of(pod: dict[str, Any]) -> str | None:
    """Which of its task's pods it is, as its label says."""
    return (pod["metadata"].get("labels") or {}).get(LIFETIME_LABEL)


def _deleting(obj: dict[str, Any]) -> bool:
    return bool(obj["metadata"].get("deletionTimestamp"))


def _mounted_claims(pod: dict[str, Any]) -> list[str]:
    volumes = (pod.get("spec") or {}).get("volumes") or []
    return [
        v["persistentVolumeClaim"].get("claimName", "") for v in volumes if v.get("persistentVolumeClaim")
    ]


def describe_claim(claim: dict[str, Any] | None) -> str:
    if claim is None:
        return "no volume claim"
    phase = (claim.get("status") or {}).get("phase") or "no phase"
    return f"volume claim {phase}" + (", being deleted" if _deleting(claim) else "")


def describe_workspace(claim: dict[str, Any] | None, pod: dict[str, Any] | None) -> str:
    """The volume claim, and the pod with its lifetime."""
    if pod is None:
        return f"{describe_claim(claim)}, no pod"
    return f"{describe_claim(claim)}, pod of lifetime {lifetime_of(pod)}: {describe_pod(pod)}"


def check_phases(observed: Observed, history: History) -> list[Violation]:
    """Paused: spec.paused and no pod; its volume claim kept once it has had a pod. Active: a Running Ready
    pod of the recorded lifetime, on its volume claim. Error: only on a template the schedule left broken,
    with a message. Nothing else after the settle."""
    claims = {key_of(c): c for c in observed.claims}
    pods = {key_of(p): p for p in observed.pods}
    found = []
    for task in observed.tasks:
        namespace, name = key_of(task)
        spec, status = task.get("spec") or {}, task.get("status") or {}
        phase, message = status.get("phase"), status.get("message") or ""
        seen = f"phase {phase or 'none'}" + (f" ({message})" if message else "")
        generation = task["metadata"].get("generation")
        if status.get("observedGeneration") != generation:
            why = f"status.observedGeneration {status.get('observedGeneration')}, generation {generation}"
            found.append(Violation("phase", who_of(task), f"{why}; {seen}"))
        claim = claims.get((namespace, claim_name(name)))
        pod = pods.get((namespace, pod_name(name)))
        lifetime = (status.get("workspace") or {}).get("lifetime") or 0
        problem = None
        if spec.get("paused"):
            if phase != "Paused":
                problem = f"spec.paused, but {seen}"
            elif pod is not None:
                problem = f"Paused, but its pod is still there ({describe_pod(pod)})"
            elif claim is None and lifetime > 0:  # a task created paused has had no pod, nor files
                problem = f"Paused after lifetime {lifetime}, but it has no volume claim: its files are gone"
            elif claim is not None and _deleting(claim):
                problem = "Paused, but its volume claim is being deleted"
        elif phase == "Active":
            if pod is None:
                problem = "Active, but it has no pod"
            elif (pod.get("status") or {}).get("phase") != "Running" or not _ready(pod) or _deleting(pod):
                problem = f"Active, but its pod is {describe_pod(pod)}"
            elif claim is None or _deleting(claim):
                problem = f"Active, but its pod runs with {describe_claim(claim)}"
            elif claim_name(name) not in _mounted_claims(pod):
                mounted = ", ".join(_mounted_claims(pod)) or "none"
                problem = f"Active, but its pod does not mount {claim_name(name)} (volume claims: {mounted})"
            elif lifetime_of(pod) != str(lifetime):
                problem = f"Active in lifetime {lifetime}, but its pod is of lifetime {lifetime_of(pod)}"
        elif phase == "Error":
            if (namespace, spec.get("template", "default")) not in history.broken:
                problem = f"{seen}, though its template is not broken; {describe_workspace(claim, pod)}"
            elif not message:
                problem = "Error, with no message"
        else:
            problem = f"{seen} after the settle; {describe_workspace(claim, pod)}"
        if problem:
            found.append(Violation("phase", who_of(task), problem))
    return found


def check_prompts(observed: Observed, history: History) -> list[Violation]:
    """No user message twice in any conversation (prompts and sends are all distinct texts), and every
    Active task's prompt in its agent's conversation."""
    found = []
    for who, conversation in sorted(observed.conversations.items()):
        users = [m for m in conversation.messages if m.get("role") == "user"]
        counts = Counter(str(m.get("content", "")).strip() for m in users)
        for content, n in counts.items():
            if n > 1:
                what = "prompt" if content in history.prompts else "message"
                times = ", ".join(
                    str(m.get("time")) for m in users if str(m.get("content")).strip() == content
                )
                seen = f"{what} {preview(content)} is a user message {n} times ({times}), in the "
                seen += conversation.source
                found.append(Violation("prompt", who, seen))
    for task in observed.tasks:
        spec, status = task.get("spec") or {}, task.get("status") or {}
        live = observed.conversations.get(who_of(task))
        if status.get("phase") != "Active" or spec.get("paused") or live is None:
            continue
        prompt = str(spec.get("prompt", "")).strip()
        if not any(
            m.get("role") == "user" and str(m.get("content")).strip() == prompt for m in live.messages
        ):
            recorded = status.get("prompt") or {}
            seen = (
                f"Active, but its prompt {preview(prompt)} is not among its agent's "
                f"{len(live.messages)} messages (status.prompt: {recorded or 'none'})"
            )
            found.append(Violation("prompt", who_of(task), seen))
    return found


def _snapshot_messages(configmap: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    try:
        envelope = json.loads(((configmap or {}).get("data") or {})["snapshot.json"])
        return list(envelope["data"]["messages"])
    except (KeyError, TypeError, ValueError):
        return None


def _event_time(event: dict[str, Any]) -> float | None:
    return _epoch(event.get("eventTime") or event.get("lastTimestamp") or event.get("firstTimestamp"))


def check_snapshots(observed: Observed, history: History) -> list[Violation]:
    """A task paused after its prompt reached the agent has status.logSnapshot naming an existing
    ConfigMap, or a SnapshotSkipped Event with a reason. While paused, its snapshot holds the last user
    message sent before the pause, or a SnapshotSkipped Event came after the pause."""
    configmaps = {key_of(c): c for c in observed.configmaps}
    skipped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in observed.events:
        if event.get("reason") == "SnapshotSkipped" and (event.get("message") or "").strip():
            skipped[(event.get("involvedObject") or {}).get("uid", "")].append(event)
    found = []
    for task in observed.tasks:
        uid, who = task["metadata"].get("uid", ""), who_of(task)
        conversation = observed.conversations.get(who)
        pauses = history.pauses.get(uid) or []
        if conversation is None or not pauses:
            continue
        said = sorted(
            (t, str(m.get("content", "")).strip())
            for m in conversation.messages
            if m.get("role") == "user" and (t := _epoch(m.get("time"))) is not None
        )
        after_delivery = [p for p in pauses if said and said[0][0] < p]
        if not after_delivery:
            continue
        recorded = (task.get("status") or {}).get("logSnapshot") or {}
        configmap = configmaps.get((task["metadata"]["namespace"], recorded.get("configMap", "")))
        events = skipped.get(uid, [])
        if configmap is None and not events:
            where = (
                f"names ConfigMap {recorded.get('configMap')}, which does not exist"
                if recorded
                else "is empty"
            )
            seen = (
                f"paused {len(after_delivery)} time(s) after its prompt was delivered, last at "
                f"{iso(after_delivery[-1])}, but status.logSnapshot {where} and no SnapshotSkipped Event "
                "says why"
            )
            found.append(Violation("snapshot", who, seen))
            continue
        last = pauses[-1]
        if not (task.get("spec") or {}).get("paused") or last not in after_delivery:
            continue
        sent_at, wanted = [s for s in said if s[0] < last][-1]
        kept = _snapshot_messages(configmap) or []
        in_snapshot = any(m.get("role") == "user" and str(m.get("content")).strip() == wanted for m in kept)
        if not in_snapshot and not any((_event_time(e) or 0) >= last - 1 for e in events):
            seen = (
                f"paused at {iso(last)}, but its snapshot (taken {recorded.get('takenAt', 'never')}, "
                f"{len(kept)} messages) lacks the last user message sent before, {preview(wanted)} at "
                f"{iso(sent_at)}, and no SnapshotSkipped Event came after the pause"
            )
            found.append(Violation("snapshot", who, seen))
    return found


def _created(obj: dict[str, Any]) -> float:
    return _epoch(obj["metadata"].get("creationTimestamp")) or 0.0


def check_orphans(observed: Observed) -> list[Violation]:
    """Each labelled Pod, PVC and ConfigMap belongs to its existing task: has it as controller owner (by
    uid: a deleted task of the same name is another), and is no older than it (else it was left by a
    deleted one of that name, and adopted)."""
    tasks = {key_of(t): t for t in observed.tasks}
    found = []
    groups = (
        ("ConfigMap", observed.configmaps),
        ("Pod", observed.pods),
        ("PersistentVolumeClaim", observed.claims),
    )
    for kind, objects in groups:
        for obj in objects:
            namespace, name = key_of(obj)
            label = (obj["metadata"].get("labels") or {}).get(TASK_LABEL, "")
            task = tasks.get((namespace, label))
            what = f"{kind} {name}"
            if task is None:
                found.append(
                    Violation("orphans", f"{namespace}/{label}", f"{what} is left of a deleted task")
                )
                continue
            controller, uid = controller_uid(obj), task["metadata"].get("uid")
            if controller != uid:
                seen = f"{what} is controlled by {controller or 'nothing'}, not by its task ({uid})"
                found.append(Violation("orphans", who_of(task), seen))
            elif _created(obj) < _created(task):
                seen = (
                    f"{what} was created at {iso(_created(obj))}, before its task ({iso(_created(task))}): "
                    "the workspace of a deleted task of that name, adopted"
                )
                found.append(Violation("orphans", who_of(task), seen))
    return found


def check_operator(log_text: str, history: History) -> list[Violation]:
    """No exit the soak did not cause, and no Traceback in the operator's log (each shown with its end)."""
    found = [Violation("operator", "operator", crash) for crash in history.crashes]
    lines = log_text.splitlines()
    for i, line in enumerate(lines):
        if "Traceback" in line:
            end = next((j for j in range(i + 1, len(lines)) if lines[j][:1] not in (" ", "")), len(lines) - 1)
            context = " | ".join(x.strip() for x in [lines[i - 1] if i else "", *lines[end : end + 1]] if x)
            found.append(Violation("operator", "operator", f"log line {i + 1}: Traceback: {context}"))
    return found


def unsettled(task: dict[str, Any], broken: set[tuple[str, str]]) -> bool:
    """On its way still: Pending, Initializing or Unknown, or in Error on a template that is not broken."""
    phase = (task.get("status") or {}).get("phase")
    if phase == "Error":
        template = (task.get("spec") or {}).get("template", "default")
        return (task["metadata"].get("namespace", ""), template) not in broken
    return phase not in ("Active", "Paused")


def check_lingering(
    before: list[dict[str, Any]], now: list[dict[str, Any]], broken: set[tuple[str, str]], touched: set[str]
) -> list[Violation]:
    """During the run: tasks unsettled at two looks a minute apart (the same task, by uid), though no
    operation touched them (`touched`: namespace/name), their template or the operator meanwhile."""
    earlier = {t["metadata"].get("uid"): t for t in before if unsettled(t, broken)}
    found = []
    for task in now:
        first = earlier.get(task["metadata"].get("uid"))
        if first is None or not unsettled(task, broken) or who_of(task) in touched:
            continue
        then, still = first.get("status") or {}, task.get("status") or {}
        seen = (
            f"during the run: {then.get('phase') or 'no phase'} ({then.get('message', '')}) at one look, "
            f"{still.get('phase') or 'no phase'} ({still.get('message', '')}) a minute later, though nothing "
            "touched it, its template or the operator in between"
        )
        found.append(Violation("phase", who_of(task), seen))
    return found


def check(observed: Observed, history: History, operator_log: str) -> dict[str, list[Violation]]:
    return {
        "phase": check_phases(observed, history),
        "prompt": check_prompts(observed, history),
        "snapshot": check_snapshots(observed, history),
        "orphans": check_orphans(observed),
        "operator": check_operator(operator_log, history),
    }

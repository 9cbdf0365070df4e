"""Who runs, and where: the slot table, admission, and what the engine does in one iteration. Pure Python,
no torch, so the policy can be tested alone.

Admission: a session is admitted while admitted sessions plus transcription helpers are fewer than the
slots; otherwise EngineFull (nothing queues real-time audio). A closed session's slot counts as free at
once: commands run in order, so its slot is released before a later session's open is applied. A
transcription helper takes a spare slot only, never one promised to a session being opened.

Policy (one iteration):
1. Prefill under a budget. Slots waiting to start a response get at most `prefill_budget` new
   positions in total per iteration, first come first served, in chunks; a long prefill is spread
   over iterations so that the others' decode steps keep coming between its chunks.
2. One batched decode step for every generating slot, except:
   - first audio first: while some slot works towards its response's first audio (its text lead-in, a
     few cheap text steps), slots whose clients hold more than `first_audio_lead_s` seconds of unplayed
     audio sit those steps out. The step then costs what the starting rows cost (the batch follows the
     rows that run), so the first audio comes a few short steps after the commit, whatever the load;
   - when the machine is saturated (the last decode step took longer than `saturated_step_s`), a slot
     whose client already holds more than `lead_s` seconds of unplayed audio sits this step out, never
     twice in a row.
   Slots closest to running dry are never skipped, so nobody starves.
3. Slots that were asked to cancel are finished before anything else runs for them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from streaming.messages import EngineFull

__all__ = ["Plan", "Policy", "Scheduler", "SlotView", "plan_iteration"]


@dataclass(frozen=True)
class SlotView:
    slot: int
    waiting_since: float  # when its pending prefill was requested (FIFO order)
    pending_positions: int  # prefill still to do before it can decode (0: ready)
    generating: bool  # has a response that is past its prefill
    lead_s: float  # audio produced minus audio the client has had time to play (seconds)
    skipped_last: bool = False
    awaiting_audio: bool = False  # generating a spoken response that has sent no audio yet


@dataclass
class Plan:
    prefill: list[tuple[int, int]] = field(default_factory=list)  # (slot, positions this iteration)
    decode: list[int] = field(default_factory=list)  # ready slots (a slot whose prefill ends now joins too)
    skipped: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Policy:
    prefill_budget: int
    saturated_step_s: float
    lead_s: float
    first_audio_lead_s: float = float("inf")  # inf: no first-audio priority


def plan_iteration(
    slots: list[SlotView],
    *,
    prefill_budget: int,
    last_step_s: float,
    saturated_step_s: float,
    lead_s: float,
    first_audio_lead_s: float = float("inf"),
) -> Plan:
    plan = Plan()
    budget = prefill_budget
    for view in sorted((v for v in slots if v.pending_positions > 0), key=lambda v: v.waiting_since):
        if budget <= 0:
            break
        n = min(view.pending_positions, budget)
        plan.prefill.append((view.slot, n))
        budget -= n
    saturated = last_step_s > saturated_step_s
    ready = [v for v in slots if v.generating and v.pending_positions == 0]
    chunk = dict(plan.prefill)
    joining = [v for v in slots if v.pending_positions > 0 and chunk.get(v.slot, 0) >= v.pending_positions]
    starting = any(v.awaiting_audio for v in (*ready, *joining))  # joining: decodes right after its prefill
    for view in ready:
        yields = starting and not view.awaiting_audio and view.lead_s > first_audio_lead_s
        waits = saturated and view.lead_s > lead_s and not view.skipped_last
        (plan.skipped if yields or waits else plan.decode).append(view.slot)
    if not plan.decode and not joining and plan.skipped:  # never idle the machine to hold rows back
        plan.decode, plan.skipped = plan.skipped, []
    return plan


class Scheduler:
    """The slot table (slot -> owner) and admission. `admit`, `withdraw`, `free` and `used` may be called
    from any thread; the rest only from the engine thread. Owners are session ids; helpers use negative ids."""

    def __init__(self, slots: int, policy: Policy) -> None:
        self.total = slots
        self.policy = policy
        self._owner: list[int | None] = [None] * slots
        self._admitted: set[int] = set()  # sessions admitted and not closed or failed
        self._lock = threading.Lock()

    # ---- admission (any thread)
    def admit(self, session: int) -> None:
        with self._lock:
            helpers = sum(1 for o in self._owner if o is not None and o < 0)
            if len(self._admitted) + helpers >= self.total:
                raise EngineFull(f"all {self.total} sessions are in use")
            self._admitted.add(session)

    def withdraw(self, session: int) -> None:
        """The session was closed by its caller: its slot counts as free from now on."""
        with self._lock:
            self._admitted.discard(session)

    @property
    def free(self) -> int:
        with self._lock:
            helpers = sum(1 for o in self._owner if o is not None and o < 0)
            return self.total - len(self._admitted) - helpers

    @property
    def used(self) -> int:
        with self._lock:
            return sum(1 for o in self._owner if o is not None)

    # ---- the slot table (engine thread)
    def place(self, owner: int) -> int | None:
        """A free slot for an admitted session, or a spare one for a helper (owner < 0); None if none."""
        with self._lock:
            free = [i for i, o in enumerate(self._owner) if o is None]
            promised = len(self._admitted - set(self._owner))  # admitted, not placed yet
            if not free or (owner < 0 and len(free) <= promised):
                return None
            self._owner[free[0]] = owner
            return free[0]

    def release(self, slot: int) -> None:
        with self._lock:
            owner, self._owner[slot] = self._owner[slot], None
            self._admitted.discard(owner)

    def schedule(self, views: list[SlotView], last_step_s: float) -> Plan:
        p = self.policy
        return plan_iteration(views, prefill_budget=p.prefill_budget, last_step_s=last_step_s,
                              saturated_step_s=p.saturated_step_s, lead_s=p.lead_s,
                              first_audio_lead_s=p.first_audio_lead_s)

"""Who runs, and where: the slot table, admission, and what the engine does in one iteration. Pure Python,
no torch, so the policy can be tested alone.

Admission: a session is admitted while admitted sessions plus transcription helpers are fewer than the
slots, and while the measured decode steps leave room for one more real-time session (`Headroom`: a step's
cost fitted against its batch size, and the step time real time allows); otherwise EngineFull (nothing
queues real-time audio: a refused client is told at once and may try again later or elsewhere). A closed
session's slot counts as free at once: commands run in order, so its slot is released before a later
session's open is applied. A transcription helper takes a spare slot only, never one promised to a session
being opened.

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
4. Speculative work (a response prepared before its turn is committed: streaming/speculation.py) comes last and
   runs only where it costs no one (`may_speculate`): when no other session has work, or when every other one is
   generating, past its first audio, at least `speculate_lead_s` ahead of its client's playback, the last step
   was not saturated and the step with the extra rows still fits real time. A speculative row never makes
   another sit a step out (first audio first counts real rows only), and its prefill takes what budget is left.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from streaming.messages import EngineFull

__all__ = ["Headroom", "Plan", "Policy", "Scheduler", "SlotView", "may_speculate", "plan_iteration"]


@dataclass(frozen=True)
class SlotView:
    slot: int
    waiting_since: float  # when its pending prefill was requested (FIFO order)
    pending_positions: int  # prefill still to do before it can decode (0: ready)
    generating: bool  # has a response that is past its prefill
    lead_s: float  # audio produced minus audio the client has had time to play (seconds)
    skipped_last: bool = False
    awaiting_audio: bool = False  # generating a spoken response that has sent no audio yet
    speculative: bool = False  # its turn is not committed yet: lowest priority


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
    speculate_lead_s: float = 0.4  # others must be this far ahead of playback for speculative work to run


def may_speculate(others: list[SlotView], *, last_step_s: float, saturated_step_s: float, lead_s: float,
                  headroom: Headroom | None = None, extra_rows: int = 1) -> bool:
    """Whether speculative work may run this iteration beside `others` (the non-speculative slots with a
    response): see the module's point 4."""
    if not others:
        return True  # nobody to delay
    if last_step_s > saturated_step_s:
        return False
    if any(v.pending_positions > 0 or not v.generating or v.awaiting_audio or v.lead_s < lead_s for v in others):
        return False
    if headroom is not None:
        predicted = headroom.step_s(len(others) + extra_rows)
        if predicted is not None and predicted > headroom.budget_s:
            return False
    return True


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
    for view in sorted((v for v in slots if v.pending_positions > 0), key=lambda v: (v.speculative, v.waiting_since)):
        if budget <= 0:
            break
        n = min(view.pending_positions, budget)
        plan.prefill.append((view.slot, n))
        budget -= n
    saturated = last_step_s > saturated_step_s
    ready = [v for v in slots if v.generating and v.pending_positions == 0]
    chunk = dict(plan.prefill)
    joining = [v for v in slots if v.pending_positions > 0 and chunk.get(v.slot, 0) >= v.pending_positions]
    # joining: decodes right after its prefill. A speculative row never makes others wait.
    starting = any(v.awaiting_audio and not v.speculative for v in (*ready, *joining))
    for view in ready:
        yields = starting and not view.awaiting_audio and view.lead_s > first_audio_lead_s and not view.speculative
        waits = saturated and view.lead_s > lead_s and not view.skipped_last
        (plan.skipped if yields or waits else plan.decode).append(view.slot)
    if not plan.decode and not joining and plan.skipped:  # never idle the machine to hold rows back
        plan.decode, plan.skipped = plan.skipped, []
    return plan


class Headroom:
    """Whether one more session fits in real time, from the decode steps measured so far.

    A step advances every generating row by one item; a session that speaks in real time needs `steps_per_s`
    of them (its text and audio items per second of speech). So N sessions fit while a step with N rows
    takes at most `1 / steps_per_s` seconds, times `load` (the margin kept for bursts of first audio, clip
    encodes and prefills). The cost of a step with B rows is fitted as a + b * B by exponentially weighted
    least squares over recent steps; while the batch sizes seen do not spread enough for a slope, the cost is
    taken as what it measured (a small model's step is bound by per-op overhead, not by its rows). Until
    `warm_steps` steps were measured, and up to `floor` sessions, it admits: one moment of a busy machine
    must not turn a server away from its smallest use; the protection is for many sessions."""

    def __init__(self, steps_per_s: float, load: float = 0.8, memory: float = 0.99, warm_steps: int = 20,
                 floor: int = 1) -> None:
        self.budget_s = load / steps_per_s
        self.memory = memory  # weight kept per observation: ~100 steps, a few seconds of decoding
        self.warm_steps = warm_steps
        self.floor = floor
        self.steps = 0
        self._w = self._x = self._y = self._xx = self._xy = 0.0

    def observe(self, batch: int, seconds: float) -> None:
        m = self.memory
        self.steps += 1
        self._w = m * self._w + 1
        self._x = m * self._x + batch
        self._y = m * self._y + seconds
        self._xx = m * self._xx + batch * batch
        self._xy = m * self._xy + batch * seconds

    def step_s(self, batch: int) -> float | None:
        """The predicted decode step time with `batch` rows; None before any step was measured."""
        if self._w == 0:
            return None
        mean_x, mean_y = self._x / self._w, self._y / self._w
        var = self._xx / self._w - mean_x * mean_x
        if var < 1.0:  # batch sizes within about one row of each other: no slope to fit
            return mean_y
        slope = max(0.0, (self._xy / self._w - mean_x * mean_y) / var)
        return max(mean_y + slope * (batch - mean_x), 0.0)

    def admits(self, sessions: int) -> bool:
        if sessions <= self.floor or self.steps < self.warm_steps:
            return True
        predicted = self.step_s(sessions)
        return predicted is None or predicted <= self.budget_s


class Scheduler:
    """The slot table (slot -> owner) and admission. `admit`, `withdraw`, `free` and `used` may be called
    from any thread; the rest only from the engine thread. Owners are session ids; helpers use negative ids."""

    def __init__(self, slots: int, policy: Policy, headroom: Headroom | None = None) -> None:
        self.total = slots
        self.policy = policy
        self.headroom = headroom  # None: admission by slot count only
        self._owner: list[int | None] = [None] * slots
        self._admitted: set[int] = set()  # sessions admitted and not closed or failed
        self._lock = threading.Lock()

    # ---- admission (any thread)
    def admit(self, session: int) -> None:
        with self._lock:
            helpers = sum(1 for o in self._owner if o is not None and o < 0)
            if len(self._admitted) + helpers >= self.total:
                raise EngineFull(f"all {self.total} sessions are in use")
            h = self.headroom
            if h is not None and not h.admits(len(self._admitted) + 1):
                raise EngineFull(f"at capacity: {len(self._admitted)} sessions take the real-time budget "
                                 f"({1000 * h.budget_s:.0f} ms per decode step)")
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

    def observe_step(self, batch: int, seconds: float) -> None:
        """A decode step of `batch` rows took `seconds` (engine thread): what admission measures."""
        if self.headroom is not None:
            with self._lock:
                self.headroom.observe(batch, seconds)

    def release(self, slot: int) -> None:
        with self._lock:
            owner, self._owner[slot] = self._owner[slot], None
            self._admitted.discard(owner)

    def may_speculate(self, others: list[SlotView], last_step_s: float, extra_rows: int = 1) -> bool:
        p = self.policy
        with self._lock:
            return may_speculate(others, last_step_s=last_step_s, saturated_step_s=p.saturated_step_s,
                                 lead_s=p.speculate_lead_s, headroom=self.headroom, extra_rows=extra_rows)

    def schedule(self, views: list[SlotView], last_step_s: float) -> Plan:
        p = self.policy
        return plan_iteration(views, prefill_budget=p.prefill_budget, last_step_s=last_step_s,
                              saturated_step_s=p.saturated_step_s, lead_s=p.lead_s,
                              first_audio_lead_s=p.first_audio_lead_s)

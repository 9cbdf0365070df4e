"""What the engine does in one iteration: pure Python, no torch, so the policy can be tested alone.

Policy (one iteration):
1. Prefill under a budget. Slots waiting to start a response get at most `prefill_budget` new
   positions in total per iteration, first come first served, in chunks; a long prefill is spread
   over iterations so that the others' decode steps keep coming between its chunks.
2. One batched decode step for every generating slot, except that when the machine is saturated
   (the last decode step took longer than `saturated_step_s`), a slot whose client already holds more
   than `lead_s` seconds of unplayed audio sits this step out. Slots closest to running dry are never
   skipped, and a slot is never skipped twice in a row, so nobody starves.
3. Slots that were asked to cancel are finished before anything else runs for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Plan", "SlotView", "plan_iteration"]


@dataclass(frozen=True)
class SlotView:
    slot: int
    waiting_since: float  # when its pending prefill was requested (FIFO order)
    pending_positions: int  # prefill still to do before it can decode (0: ready)
    generating: bool  # has a response that is past its prefill
    lead_s: float  # audio produced minus audio the client has had time to play (seconds)
    skipped_last: bool = False


@dataclass
class Plan:
    prefill: list[tuple[int, int]] = field(default_factory=list)  # (slot, positions this iteration)
    decode: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)


def plan_iteration(
    slots: list[SlotView],
    *,
    prefill_budget: int,
    last_step_s: float,
    saturated_step_s: float,
    lead_s: float,
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
    for view in slots:
        if not view.generating or view.pending_positions > 0:
            continue
        if saturated and view.lead_s > lead_s and not view.skipped_last:
            plan.skipped.append(view.slot)
        else:
            plan.decode.append(view.slot)
    if not plan.decode and plan.skipped:  # never idle the machine to hold rows back
        plan.decode, plan.skipped = plan.skipped, []
    return plan

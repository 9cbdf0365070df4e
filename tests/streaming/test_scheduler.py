"""The iteration policy, alone (no torch)."""

from streaming.scheduler import SlotView, plan_iteration

POLICY = {"prefill_budget": 100, "saturated_step_s": 0.06, "lead_s": 1.5}


def test_prefill_is_first_come_first_served_under_the_budget():
    slots = [SlotView(0, 2.0, 80, False, 0.0), SlotView(1, 1.0, 70, False, 0.0), SlotView(2, 3.0, 10, False, 0.0)]
    plan = plan_iteration(slots, last_step_s=0.01, **POLICY)
    assert plan.prefill == [(1, 70), (0, 30)]
    assert plan.decode == []


def test_generating_slots_decode_together_when_not_saturated():
    slots = [SlotView(0, 0, 0, True, 5.0), SlotView(1, 0, 0, True, 0.1), SlotView(2, 0, 40, False, 0.0)]
    plan = plan_iteration(slots, last_step_s=0.01, **POLICY)
    assert plan.decode == [0, 1] and plan.skipped == [] and plan.prefill == [(2, 40)]


def test_far_ahead_slots_wait_when_saturated_but_never_twice_in_a_row():
    slots = [SlotView(0, 0, 0, True, 5.0), SlotView(1, 0, 0, True, 0.1)]
    plan = plan_iteration(slots, last_step_s=0.2, **POLICY)
    assert plan.decode == [1] and plan.skipped == [0]
    slots[0] = SlotView(0, 0, 0, True, 5.0, skipped_last=True)
    assert plan_iteration(slots, last_step_s=0.2, **POLICY).decode == [0, 1]


def test_the_machine_never_idles_to_hold_rows_back():
    plan = plan_iteration([SlotView(0, 0, 0, True, 9.0)], last_step_s=0.5, **POLICY)
    assert plan.decode == [0] and plan.skipped == []

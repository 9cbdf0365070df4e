"""The iteration policy, alone (no torch)."""

import pytest

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


def test_admission_and_the_slot_table():
    import pytest

    from streaming.messages import EngineFull
    from streaming.scheduler import Policy, Scheduler

    s = Scheduler(2, Policy(**POLICY))
    s.admit(1)
    s.admit(2)
    with pytest.raises(EngineFull):
        s.admit(3)
    assert s.place(1) == 0 and s.free == 0
    assert s.place(-1) is None  # a helper never takes the slot promised to session 2
    assert s.place(2) == 1 and s.used == 2
    s.withdraw(2)  # closed by its caller: free at once, though its slot is released later
    assert s.free == 1 and s.used == 2
    s.admit(3)
    s.release(1)
    assert s.place(-1) is None  # session 3 is promised the free slot
    assert s.place(3) == 1
    s.release(0)  # session 1 failed: its admission goes with its slot
    assert s.free == 1 and s.place(-1) == 0 and s.free == 0


def test_the_scheduler_needs_no_torch():
    import subprocess
    import sys

    code = "import sys, streaming.scheduler, streaming.messages; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


FIRST_AUDIO = {**POLICY, "first_audio_lead_s": 0.4}


def test_far_ahead_slots_sit_out_while_another_works_towards_its_first_audio():
    slots = [SlotView(0, 0, 0, True, 2.0), SlotView(1, 0, 0, True, 0.1), SlotView(2, 0, 0, True, 0.0,
                                                                                      awaiting_audio=True)]
    plan = plan_iteration(slots, last_step_s=0.01, **FIRST_AUDIO)
    assert plan.decode == [1, 2] and plan.skipped == [0]  # slot 1 is close to running dry: it runs
    slots[2] = SlotView(2, 0, 0, True, 0.08)  # its first audio went out
    assert plan_iteration(slots, last_step_s=0.01, **FIRST_AUDIO).decode == [0, 1, 2]
    assert plan_iteration([*slots[:2], SlotView(2, 0, 0, True, 0.0, awaiting_audio=True)], last_step_s=0.01,
                          **POLICY).decode == [0, 1, 2]  # no priority configured


def test_a_slot_whose_prefill_ends_now_counts_as_starting():
    slots = [SlotView(0, 0, 0, True, 2.0), SlotView(1, 5.0, 30, False, 0.0, awaiting_audio=True)]
    plan = plan_iteration(slots, last_step_s=0.01, **FIRST_AUDIO)
    assert plan.prefill == [(1, 30)] and plan.decode == [] and plan.skipped == [0]  # slot 1 decodes alone
    slots[1] = SlotView(1, 5.0, 300, False, 0.0, awaiting_audio=True)  # more than one chunk: not yet
    plan = plan_iteration(slots, last_step_s=0.01, **FIRST_AUDIO)
    assert plan.prefill == [(1, 100)] and plan.decode == [0]


def test_headroom_fits_step_cost_against_batch_size():
    from streaming.scheduler import Headroom

    h = Headroom(steps_per_s=20, load=1.0)  # real time allows 50 ms per step
    assert h.step_s(8) is None and h.admits(50)  # nothing measured yet
    for _ in range(40):  # steps cost 5 ms + 1 ms per row, at batches 4 and 12
        h.observe(4, 0.009)
        h.observe(12, 0.017)
    assert h.step_s(32) == pytest.approx(0.037)
    assert h.admits(44) and not h.admits(46)  # 5 + 44 ms fit in 50 ms, 5 + 46 do not


def test_headroom_without_a_spread_of_batches_takes_the_cost_measured():
    from streaming.scheduler import Headroom

    h = Headroom(steps_per_s=20, load=0.8, warm_steps=5, floor=1)  # 40 ms per step
    for _ in range(4):
        h.observe(2, 0.06)
    assert h.admits(3)  # not warm yet
    h.observe(2, 0.06)
    assert h.admits(1) and not h.admits(2)  # the first session is always admitted; the next would not be real time
    floored = Headroom(steps_per_s=20, load=0.8, warm_steps=5, floor=4)
    for _ in range(5):
        floored.observe(2, 0.06)
    assert floored.admits(4) and not floored.admits(5)  # up to the floor, whatever was measured
    for _ in range(400):  # the machine became quiet again: the old steps are forgotten
        h.observe(2, 0.01)
    assert h.admits(3)


def test_admission_refuses_a_session_real_time_has_no_room_for():
    from streaming.messages import EngineFull
    from streaming.scheduler import Headroom, Policy, Scheduler

    s = Scheduler(8, Policy(**POLICY), Headroom(steps_per_s=20, load=1.0, warm_steps=1, floor=1))
    s.admit(1)
    s.admit(2)
    for _ in range(10):
        s.observe_step(1, 0.03)
        s.observe_step(3, 0.07)  # 10 ms + 20 ms per row: a third session would need 70 ms steps
    with pytest.raises(EngineFull, match="at capacity"):
        s.admit(3)
    assert s.free == 6  # slots are free; the refusal is the measured budget's

"""Draining with real processes: three `lfm-audio serve` replicas (tiny model) behind a real nginx
(deploy/nginx/lfm-audio.conf) on loopback, driven by the load generator's simulated users (loadtests.user).

1. Three users: one session on each replica (least_conn spreads them). Each finishes two turns: the baseline.
2. SIGTERM to replica A while its user's reply is being generated: /readyz on A answers 503 at once, the reply
   reaches response.done, then A closes the session (1001, "server shutting down") and exits within its grace.
3. New sessions after the SIGTERM go to the other replicas (A's 503 makes nginx try the next): quick probes
   while A drains, and one user who takes the place of A's (the load stays at three users).
4. kill -9 of replica B: its users' connections close within seconds (nginx closes them: code 1006), no client
   waits for a timeout.
5. The users on the last replica C never see an error, complete every turn, and have no underrun they would not
   have had. The rule: the survivors' underruns after the SIGTERM at most twice the rate of the baseline turns
   (every user's, before it), plus one (the noise of 2 shared cores; see the assertion).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import pytest
import websockets

from loadtests.clips import speech_clip
from loadtests.scenario import Scenario
from loadtests.user import User
from server.drain import CLOSE_REASON
from tests.deploy.test_nginx import nginx_in_front, replicas
from tests.server.harness import ServerProcess

pytestmark = pytest.mark.slow

GRACE_S = 30  # the replicas' shutdown grace: far above an 80-token reply (6.4 s of audio, generated faster)
EXIT_SLACK_S = 10  # a drained replica's exit after its drain: uvicorn's shutdown, the engine's stop
CLOSE_WITHIN_S = 5  # a killed replica's clients learn of it this fast (nginx sees the upstream reset at once)
WAIT_S = 120  # the longest any phase may take on a loaded 2-core machine; a bound, not a figure
BASELINE_TURNS = 2  # per user, before the SIGTERM
FIRST_TURNS, LATER_TURNS = 6, 3  # wave 1 runs through every phase; wave 2 starts after the SIGTERM


class TracedUser(User):
    """A load-generator user that also notes its session id and when the server's side ended the connection."""

    session_id: str | None = None
    lost_at: float | None = None  # the server closed or lost the connection (not the user's own close)

    def _ev_session_updated(self, now: float, e: dict) -> None:
        self.session_id = (e.get("session") or {}).get("id")
        super()._ev_session_updated(now, e)

    def _link(self):
        link = super()._link()
        closed = link._closed

        def lost(reason: str) -> None:
            if not link.closed.is_set():
                self.lost_at = time.monotonic()
            closed(reason)

        link._closed = lost
        return link

    @property
    def close(self) -> tuple[int | None, str]:
        ws = self.link._ws
        return ws.close_code, ws.close_reason


def replica_of(user: TracedUser, servers: list[ServerProcess]) -> int:
    hosts = [i for i, s in enumerate(servers) if any(e["session"] == user.session_id
                                                     for e in s.log_events("session_start"))]
    assert len(hosts) == 1, (user.session_id, hosts)
    return hosts[0]


async def until(check, what: str, timeout: float = WAIT_S, every: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not {what} after {timeout} s"
        await asyncio.sleep(every)


def readyz(server: ServerProcess) -> int:
    try:
        return httpx.get(server.base + "/readyz", timeout=5).status_code
    except httpx.ConnectError:
        return 0  # not listening any more


def exit_time(server: ServerProcess) -> float:
    server.proc.wait()
    return time.monotonic()


async def probe(url: str) -> str:
    """A session through nginx that closes at once: the type of its first event."""
    async with websockets.connect(url + "/realtime", open_timeout=10) as ws:
        return json.loads(await asyncio.wait_for(ws.recv(), 10))["type"]


async def drill(servers: list[ServerProcess], port: int) -> dict:
    scenario = Scenario(users=1, turns=FIRST_TURNS)  # issue #9's turn: a 3.5 s clip, server VAD, 80-token replies
    clip = speech_clip(scenario.clip_text, scenario.clip_s)
    url = f"ws://127.0.0.1:{port}/v1"
    tasks: list[asyncio.Task] = []

    def start(index: int, turns: int) -> TracedUser:
        user = TracedUser(index, Scenario(users=1, turns=turns), clip, url, push_to_talk=False,
                          barge_in=[False] * turns)
        tasks.append(asyncio.create_task(user.run()))
        return user

    seen: dict = {}
    first = []
    for i in range(len(servers)):
        first.append(start(i, FIRST_TURNS))
        await until(lambda u=first[-1]: u.session_id is not None, "in session")  # one at a time: least_conn
    await until(lambda: all(sum(t.completed for t in u.result.turns) >= BASELINE_TURNS for u in first),
                "through the baseline turns")
    seen["placed"] = [replica_of(u, servers) for u in first]

    a_user = first[0]
    a = servers[seen["placed"][0]]
    await until(lambda: (t := a_user.result.turns[-1]).response_created is not None and not t.got_done.is_set(),
                "generating a reply on A")
    seen["sigterm_at"] = time.monotonic()
    seen["in_flight"] = a_user.result.turns[-1]
    a.proc.send_signal(signal.SIGTERM)
    a_exited = asyncio.create_task(asyncio.to_thread(exit_time, a))
    while (status := await asyncio.to_thread(readyz, a)) == 200:
        await asyncio.sleep(0.01)
    seen["readyz"], seen["readyz_after_s"] = status, time.monotonic() - seen["sigterm_at"]
    # While A drains, sessions opened one after another: nginx's least_conn has a tie (one session on each
    # replica) and takes them in turn, so A gets asked, answers 503, and nginx tries the next replica.
    seen["probes"] = [await probe(url) for _ in range(len(servers))]
    seen["probes_while_draining"] = a_user.lost_at is None

    second = [start(len(first), LATER_TURNS)]
    await until(lambda: all(any(t.completed for t in u.result.turns) for u in second), "past a turn (wave 2)")
    seen["placed_later"] = [replica_of(u, servers) for u in second]
    seen["a_exit_after_s"] = await asyncio.wait_for(a_exited, GRACE_S + EXIT_SLACK_S) - seen["sigterm_at"]

    # kill -9 the other replica with the most users; the last one survives
    others = [i for i in range(len(servers)) if servers[i] is not a]
    load = {i: (seen["placed"] + seen["placed_later"]).count(i) for i in others}
    b_index = max(others, key=lambda i: load[i])
    seen["b_index"], seen["c_index"] = b_index, next(i for i in others if i != b_index)
    seen["kill_at"] = time.monotonic()
    servers[b_index].proc.kill()
    await asyncio.wait(tasks, timeout=WAIT_S + FIRST_TURNS * 15)
    assert all(t.done() for t in tasks), "users still running at the deadline"
    for t in tasks:
        t.result()  # a crashed client is a test failure
    seen["users"] = first + second
    seen["where"] = dict(zip(first + second, seen["placed"] + seen["placed_later"], strict=True))
    return seen


def underruns(turns) -> tuple[int, int]:
    return sum(t.player.underruns for t in turns), len(turns)


def test_drain_and_kill_behind_nginx(tiny_dir, tmp_path):
    args = ["--shutdown-grace-s", str(GRACE_S)]
    with replicas(tiny_dir, tmp_path, 3, args) as servers, nginx_in_front(tmp_path, servers) as port:
        t0 = time.monotonic()
        seen = asyncio.run(drill(servers, port))
        wall_s = time.monotonic() - t0
        logs = [s.log() for s in servers]
    a_index, b_index, c_index = seen["placed"][0], seen["b_index"], seen["c_index"]
    where, sigterm_at, kill_at = seen["where"], seen["sigterm_at"], seen["kill_at"]
    on = {i: [u for u in seen["users"] if where[u] == i] for i in range(3)}

    # 1. spread: one session on each replica
    assert sorted(seen["placed"]) == [0, 1, 2], seen["placed"]

    # 2. A drained: readiness at once, the reply in flight finished, then a clean close, then A exited
    assert seen["readyz"] == 503 and seen["readyz_after_s"] < 2, seen  # 2 s: a signal hop and one HTTP request
    (a_user,) = on[a_index]
    flight = seen["in_flight"]
    assert flight.completed and flight.status in ("completed", "incomplete"), flight.to_json(sigterm_at)
    assert a_user.close == (1001, CLOSE_REASON)
    assert sigterm_at < a_user.lost_at < sigterm_at + GRACE_S and flight.response_done <= a_user.lost_at
    assert not [e for e in a_user.result.errors if e.startswith("server error")], a_user.result.errors
    assert seen["a_exit_after_s"] < GRACE_S + EXIT_SLACK_S
    a_log = [json.loads(line[line.index("{"):]) for line in logs[a_index].splitlines() if '{"event": "drain_' in line]
    assert [e["event"] for e in a_log] == ["drain_start", "drain_end"], a_log
    assert a_log[0]["responding"] == 1 and a_log[1]["cut_off"] == 0, a_log
    refused = logs[a_index].count('"WebSocket /v1/realtime" 503')  # uvicorn's access log: nginx then tried another

    # 3. the new sessions went to the others, none was refused
    assert a_index not in seen["placed_later"], seen["placed_later"]
    assert seen["probes"] == ["session.created"] * len(servers), seen["probes"]
    if seen["probes_while_draining"]:
        assert refused >= 1, "nginx never asked the draining replica: the 503 retry went untested"
    assert all(u.result.rejected is None for u in seen["users"])

    # 4. B's clients: a prompt close, nobody waits for a timeout
    for u in on[b_index]:
        assert u.lost_at is not None and kill_at <= u.lost_at < kill_at + CLOSE_WITHIN_S, (u.lost_at, kill_at)
        assert len(u.result.errors) == 1 and "timed out" not in u.result.errors[0], u.result.errors
        assert all(t.completed for t in u.result.turns if t.response_done and t.response_done < kill_at)

    # 5. C's clients: untouched
    survivors = on[c_index]
    for u in survivors:
        assert u.result.errors == [] and u.lost_at is None, u.result.errors
        assert len(u.result.turns) == u.s.turns and all(t.completed for t in u.result.turns)
    baseline = [t for u in seen["users"] for t in u.result.turns if t.completed and t.response_done < sigterm_at]
    later = [t for u in survivors for t in u.result.turns if t.response_done > sigterm_at]
    later += [t for u in on[b_index] for t in u.result.turns
              if t.completed and sigterm_at < t.response_done < kill_at]
    (base_n, base_turns), (later_n, later_turns) = underruns(baseline), underruns(later)
    for u in seen["users"]:  # per turn: when it ended (s after SIGTERM), where, its underruns; the client's lag
        print(f"user {u.result.index} on {where[u]} (client lag max {u.result.mic_late_max_s:.3f} s):",
              [(round(t.response_done - sigterm_at, 1), t.player.underruns) for t in u.result.turns
               if t.response_done])
    print(f"\ndrill in {wall_s:.0f} s: replicas A={a_index} B={b_index} C={c_index}; users per replica "
          f"{ {i: len(on[i]) for i in on} }; readyz 503 {seen['readyz_after_s'] * 1000:.0f} ms after SIGTERM; "
          f"A's reply done {flight.response_done - sigterm_at:.2f} s and its session closed "
          f"{a_user.lost_at - sigterm_at:.2f} s after SIGTERM; A exited after {seen['a_exit_after_s']:.1f} s; "
          f"B's clients closed {[round(u.lost_at - kill_at, 3) for u in on[b_index]]} s after kill -9 "
          f"({[u.close[0] for u in on[b_index]]}); underruns: baseline {base_n}/{base_turns} turns, survivors "
          f"after SIGTERM {later_n}/{later_turns} turns; upgrades A refused while draining: {refused} "
          f"(probes while draining: {seen['probes_while_draining']})")
    assert base_turns >= BASELINE_TURNS * len(servers) and later_turns >= 3
    # The survivors' underruns at most twice the baseline's rate, plus one: three servers, nginx and the load
    # generator share 2 cores here, and a single late step of the OS scheduler is not the drain's doing (seen
    # once in a loaded suite: 0 in the baseline, 1 in 6 later turns). A drain that disturbed the others (their
    # steps stalled, sessions moved onto them) costs many.
    allowed = 2 * base_n / base_turns * later_turns + 1
    assert later_n <= allowed, (base_n, base_turns, later_n, later_turns)

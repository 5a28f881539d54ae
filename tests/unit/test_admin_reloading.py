"""The admin page's Reload roll (gateway_kit/admin/reloading.py) against scripted replicas, on an injected clock.

Each scripted replica answers POST /-/reload/check and POST /-/reload as a replica does, and its GET /ready
reports the config it serves: the new one some polls after its reload, or never. The page in a browser, against
real replicas, is tests/stack/test_admin_reload.py.
"""

from __future__ import annotations

from gateway_kit import reload
from gateway_kit.admin import page
from gateway_kit.admin.__main__ import NO_TOKEN, ON_KUBERNETES
from gateway_kit.admin.figures import Replica
from gateway_kit.admin.reloading import Reloader

OLD, NEW = "0ld0ld0ld0ld", "4e3a1c0b9d27"
REFUSAL = "gateway: error: /app/config.yaml:7: endpoint 'chat': unknown key `limt` (did you mean `limit`?)"


class Replicas:
    """Scripted replicas: what each answers, and every request they got, in order."""

    def __init__(self, *addresses: str, follows_after: int = 2) -> None:
        self.serving = dict.fromkeys(addresses, OLD)
        self.check: tuple[int, dict] = (200, {"config_hash": NEW})
        self.reload_status = dict.fromkeys(addresses, 202)
        self.follows_after = dict.fromkeys(addresses, follows_after)  # polls of /ready until the new config
        self.asked: list[tuple[str, str]] = []

    def call(self, address: str, path: str) -> tuple[int, dict]:
        self.asked.append((address, path))
        if path == reload.CHECK_PATH:
            return self.check
        status = self.reload_status[address]
        return status, ({"status": "reloading"} if status == 202 else {})

    def served(self, address: str) -> str:
        reloaded = (address, reload.RELOAD_PATH) in self.asked
        if reloaded and self.serving[address] != NEW:
            if self.follows_after[address] is not None:
                self.follows_after[address] -= 1
                if self.follows_after[address] <= 0:
                    self.serving[address] = NEW
        return self.serving[address]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def reloader(replicas: Replicas, follow: float = 30.0) -> Reloader:
    clock = Clock()
    return Reloader(
        "t" * 64, follow=follow, poll=1.0, call=replicas.call, served=replicas.served, clock=clock, sleep=clock.sleep
    )


def test_a_good_config_is_checked_once_then_rolled_one_replica_at_a_time():
    replicas = Replicas("10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000")
    roll = reloader(replicas).roll(list(replicas.serving))
    assert roll.result == "reloaded" and roll.config_hash == NEW
    assert [(r.address, r.ok) for r in roll.replicas] == [(a, True) for a in replicas.serving]
    assert replicas.asked == [
        ("10.0.0.1:8000", reload.CHECK_PATH),
        ("10.0.0.1:8000", reload.RELOAD_PATH),
        ("10.0.0.2:8000", reload.RELOAD_PATH),
        ("10.0.0.3:8000", reload.RELOAD_PATH),
    ]
    assert set(replicas.serving.values()) == {NEW}


def test_a_refused_config_touches_no_replica_and_says_the_line_and_reason():
    replicas = Replicas("10.0.0.1:8000", "10.0.0.2:8000")
    replicas.check = (422, {"error": {"type": "config_refused", "message": REFUSAL}})
    roll = reloader(replicas).roll(list(replicas.serving))
    assert (roll.result, roll.problem, roll.replicas) == ("refused", REFUSAL, [])
    assert replicas.asked == [("10.0.0.1:8000", reload.CHECK_PATH)]
    assert set(replicas.serving.values()) == {OLD}


def test_a_replica_that_does_not_follow_in_time_stops_the_roll():
    replicas = Replicas("10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000")
    replicas.follows_after["10.0.0.2:8000"] = None  # its master refused the file, or its workers do not start
    roll = reloader(replicas, follow=10).roll(list(replicas.serving))
    assert roll.result == "failed" and "10.0.0.2:8000 did not take config" in roll.problem
    assert [(r.address, r.ok) for r in roll.replicas] == [
        ("10.0.0.1:8000", True), ("10.0.0.2:8000", False), ("10.0.0.3:8000", False),
    ]  # fmt: skip
    assert "still serves 0ld0ld0ld0ld 10 s after the reload" in roll.replicas[1].outcome
    assert "the roll stopped before it" in roll.replicas[2].outcome
    assert ("10.0.0.3:8000", reload.RELOAD_PATH) not in replicas.asked
    assert replicas.serving["10.0.0.3:8000"] == OLD


def test_a_replica_without_the_token_is_reported_and_the_roll_stops():
    replicas = Replicas("10.0.0.1:8000", "10.0.0.2:8000")
    replicas.reload_status["10.0.0.1:8000"] = 403
    roll = reloader(replicas).roll(list(replicas.serving))
    assert roll.result == "failed"
    assert "another reload token than the page" in roll.replicas[0].outcome
    assert ("10.0.0.2:8000", reload.RELOAD_PATH) not in replicas.asked


def test_the_check_goes_to_the_next_replica_when_one_does_not_answer():
    replicas = Replicas("10.0.0.1:8000", "10.0.0.2:8000")
    answers = iter([(0, {"unreachable": "no answer (ConnectionRefusedError)"}), (200, {"config_hash": NEW})])
    original = replicas.call
    replicas.call = lambda a, p: next(answers) if p == reload.CHECK_PATH else original(a, p)
    roll = reloader(replicas).roll(list(replicas.serving))
    assert roll.result == "reloaded" and roll.config_hash == NEW


def test_replicas_that_already_serve_the_config_are_left_alone():
    replicas = Replicas("10.0.0.1:8000", "10.0.0.2:8000")
    replicas.serving["10.0.0.1:8000"] = NEW
    roll = reloader(replicas).roll(list(replicas.serving))
    assert roll.result == "reloaded"
    assert ("10.0.0.1:8000", reload.RELOAD_PATH) not in replicas.asked
    assert "already" in roll.replicas[0].outcome


def test_a_second_reload_while_one_rolls_is_turned_away():
    replicas = Replicas("10.0.0.1:8000")
    rolling = reloader(replicas)
    inner = []

    def served_and_press_again(address: str) -> str:
        if not inner:
            inner.append(rolling.roll([address]))
        return replicas.served(address)

    rolling._served = served_and_press_again
    assert rolling.roll(list(replicas.serving)).result == "reloaded"
    assert inner[0].result == "busy"


def dashboard(reload_how: str) -> str:
    return page.dashboard(
        who="dana", csrf="c" * 64, replicas=[Replica("10.0.0.1:8000", "gw-1", True, "config: ok", NEW)],
        unresolved=[], usage=None, usage_problem="no ledger", limit_uses=[], limits_problem="", redis="not set",
        keys=[], keys_problem="", keys_where="the keys file", keys_follow="about a second", last_use={},
        config="/app/config.yaml", reload_how=reload_how,
    )  # fmt: skip


def test_the_page_has_a_reload_button_only_where_the_page_can_reload():
    with_token = dashboard("")
    assert "id=reload-config" in with_token and 'name=csrf value="' + "c" * 64 in with_token
    assert f"<td>{NEW}</td>" in with_token  # the hash each replica serves
    without = dashboard(NO_TOKEN)
    assert "id=reload-config" not in without and "scripts/reload.sh" in without
    assert "helm upgrade" in dashboard(ON_KUBERNETES) and "id=reload-config" not in dashboard(ON_KUBERNETES)

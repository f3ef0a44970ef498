"""The checker fails broken histories, and passes a sound one."""

from app.chaos import Attempt, Observed, Operation, StoredOrder, check

ORDER = "01JCHAOS0000000000000000AA"


def place(key: str, status: int | None, order_id: str | None = ORDER) -> Operation:
    op = Operation(0, 0, "place", key, order_id)
    op.attempts.append(Attempt(0, 0.0, 0.1, status))
    return op


def pay(key: str, amount: int, *statuses: int | None) -> Operation:
    op = Operation(0, 1, "pay", key, ORDER, amount)
    op.attempts += [Attempt(0, 0.0, 0.1, status) for status in statuses]
    return op


def stored(paid: int = 0, payments: tuple[str, ...] = (), status: str = "confirmed"):
    return {ORDER: StoredOrder(ORDER, "k1", status, paid, payments)}


def invariants(ops, observed) -> list[str]:
    return [violation.invariant for violation in check(ops, observed)]


def test_a_sound_history_passes():
    ops = [place("k1", 202), pay("p1", 5, 503, 202), pay("p2", 7, 503, None)]
    assert check(ops, Observed(stored(5, ("p1",)))) == []
    assert check(ops, Observed(stored(12, ("p1", "p2")))) == []  # p2 indeterminate: either


def test_a_lost_order_is_caught():
    assert invariants([place("k1", 202)], Observed({})) == ["confirmed"]


def test_an_order_left_pending_is_caught():
    assert invariants([place("k1", 202)], Observed(stored(status="pending"))) == ["confirmed"]


def test_an_order_of_a_refused_command_is_caught():
    assert invariants([place("k1", 409)], Observed(stored())) == ["unasked"]


def test_an_order_nobody_placed_is_caught():
    assert invariants([], Observed(stored())) == ["unasked"]


def test_two_orders_for_one_key_are_caught():
    orders = stored() | {
        "01JCHAOS0000000000000000BB": StoredOrder("01JCHAOS0000000000000000BB", "k1", "confirmed")
    }
    assert "unasked" in invariants([place("k1", 202)], Observed(orders))


def test_a_withdrawn_order_of_an_indeterminate_command_is_fine():
    assert check([place("k1", 503, None)], Observed(stored(status="withdrawn"))) == []


def test_a_double_payment_is_caught():
    ops = [place("k1", 202), pay("p1", 5, 202)]
    assert invariants(ops, Observed(stored(10, ("p1", "p1")))) == ["paid"]


def test_an_amount_applied_twice_under_one_key_is_caught():
    ops = [place("k1", 202), pay("p1", 5, 202)]
    assert invariants(ops, Observed(stored(10, ("p1",)))) == ["paid"]


def test_a_lost_payment_is_caught():
    ops = [place("k1", 202), pay("p1", 5, 202)]
    assert invariants(ops, Observed(stored(0, ()))) == ["paid"]


def test_a_refused_payment_applied_is_caught():
    ops = [place("k1", 202), pay("p1", 5, 404)]
    assert invariants(ops, Observed(stored(5, ("p1",)))) == ["paid"]


def test_a_500_is_caught_even_when_a_retry_succeeded():
    op = place("k1", 500)
    op.attempts.append(Attempt(1, 0.2, 0.3, 202))
    assert invariants([op], Observed(stored())) == ["5xx"]


def test_the_system_invariants_are_caught():
    observed = Observed(
        {},
        dead_letters=["OrderPlaced handler: boom"],
        discovery_seconds=None,
        leftovers=["123 nats-server"],
        rss_growth={"i0": 65 * 2**20},
    )
    assert invariants([], observed) == ["dead-letters", "discovery", "leftovers", "memory"]


def test_a_cancelled_order_passes_only_with_a_payment_timeout_and_no_payment():
    ops = [place("k1", 202), pay("p1", 5, 409)]
    assert invariants(ops, Observed(stored(status="cancelled"))) == ["confirmed"]
    assert invariants(ops, Observed(stored(status="cancelled"), cancelling=True)) == []


def test_a_cancelled_order_with_an_accepted_payment_is_caught():
    ops = [place("k1", 202), pay("p1", 5, 202)]
    observed = Observed(stored(0, (), status="cancelled"), cancelling=True)
    assert "cancelled" in invariants(ops, observed)
    observed = Observed(stored(5, ("p1",), status="cancelled"), cancelling=True)
    assert invariants(ops, observed) == ["cancelled"]

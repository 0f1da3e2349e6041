"""The finishing pool beside the worker's compute loop: bounded, its batches' entries pending
until their work is done, and closed only once every batch is finished."""

import threading
import time

from workers.finishing import Finisher

WAIT_S = 10.0


def test_work_runs_beside_the_caller_and_its_entries_stay_pending_until_done() -> None:
    finisher = Finisher(threads=1, capacity=2)
    release = threading.Event()
    done: list[str] = []

    def work() -> None:
        release.wait(WAIT_S)
        done.append("stored")

    finisher.submit([("model", "1-0"), ("model", "1-1")], work)

    assert finisher.pending() == [("model", "1-0"), ("model", "1-1")]
    assert done == []  # submit returned while the work waits
    release.set()
    finisher.close()
    assert done == ["stored"]
    assert finisher.pending() == []


def test_a_full_pool_blocks_the_next_submit_until_a_batch_finishes() -> None:
    finisher = Finisher(threads=1, capacity=2)
    release = threading.Event()
    finisher.submit([("m", "1")], lambda: release.wait(WAIT_S) and None)
    finisher.submit([("m", "2")], lambda: None)
    third_submitted = threading.Event()

    def submit_third() -> None:
        finisher.submit([("m", "3")], lambda: None)
        third_submitted.set()

    submitter = threading.Thread(target=submit_third)
    submitter.start()

    assert not third_submitted.wait(0.3)  # two batches held: the third waits for a slot
    assert finisher.pending() == [("m", "1"), ("m", "2")]
    release.set()
    assert third_submitted.wait(WAIT_S)
    submitter.join(WAIT_S)
    finisher.close()
    assert finisher.pending() == []


def test_close_waits_for_every_batch_in_order() -> None:
    finisher = Finisher(threads=1, capacity=3)
    order: list[int] = []
    for index in range(3):
        finisher.submit([("m", str(index))], lambda i=index: (time.sleep(0.05), order.append(i)))

    finisher.close()

    assert order == [0, 1, 2]


def test_a_batch_whose_work_raises_frees_its_slot_and_the_next_runs() -> None:
    finisher = Finisher(threads=1, capacity=1)
    done: list[str] = []

    def failing() -> None:
        raise RuntimeError("render failed")

    finisher.submit([("m", "1")], failing)
    finisher.submit([("m", "2")], lambda: done.append("second"))  # blocks until the slot frees
    finisher.close()

    assert done == ["second"]
    assert finisher.pending() == []


def test_without_threads_the_work_runs_on_the_caller() -> None:
    finisher = Finisher(threads=0)
    ran_on: list[threading.Thread] = []

    finisher.submit([("m", "1")], lambda: ran_on.append(threading.current_thread()))

    assert ran_on == [threading.current_thread()]
    assert finisher.pending() == []

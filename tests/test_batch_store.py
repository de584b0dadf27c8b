"""The batch store's rules (infra/batches.py), on SQLite and PostgreSQL.

Order within a sequence key, attempts and the dead letter, exactly one outcome per attempt,
unique item keys, and no item claimed twice by concurrent claimers.
"""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import Engine

from core.errors import StoreRejectedError
from infra.batches import BatchRecord, BatchStore, ItemStatus, NewItem, item_job_id
from tests.test_store import bare_engine, engine  # noqa: F401 - fixtures on both backends


def _batch(store: BatchStore, items: list[NewItem], **fields: object) -> str:
    batch_id = uuid.uuid4().hex[:16]
    store.create(BatchRecord(batch_id=batch_id, **fields), items)  # type: ignore[arg-type]
    return batch_id


def _item(n: int, sequence_key: str | None = None, item_key: str | None = None) -> NewItem:
    return NewItem(
        request_json=f'{{"query": "q{n}"}}', item_key=item_key, sequence_key=sequence_key
    )


def test_claims_come_in_input_order_and_count_attempts(engine: Engine) -> None:  # noqa: F811
    store = BatchStore(engine)
    batch_id = _batch(store, [_item(i) for i in range(5)])
    first = store.claim(batch_id, 3)
    assert [c.seq for c in first] == [0, 1, 2]
    assert [c.job_id for c in first] == [item_job_id(batch_id, s, 1) for s in (0, 1, 2)]
    assert [c.seq for c in store.claim(batch_id, 10)] == [3, 4]
    assert store.claim(batch_id, 10) == []  # everything is running
    counts = store.counts(batch_id)
    assert counts[ItemStatus.RUNNING] == 5 and counts[ItemStatus.PENDING] == 0


def test_a_sequence_key_runs_one_item_at_a_time_in_input_order(engine: Engine) -> None:  # noqa: F811
    store = BatchStore(engine)
    batch_id = _batch(store, [_item(0, "a"), _item(1, "b"), _item(2, "a"), _item(3), _item(4, "a")])
    assert [c.seq for c in store.claim(batch_id, 10)] == [0, 1, 3]  # 2 and 4 wait for 0
    assert store.claim(batch_id, 10) == []
    store.finish(batch_id, 0, item_job_id(batch_id, 0, 1), completed=True, max_attempts=3)
    assert [c.seq for c in store.claim(batch_id, 10)] == [2]  # 4 waits for 2
    # A failed attempt with attempts left goes back to pending and still holds its key.
    status = store.finish(
        batch_id, 2, item_job_id(batch_id, 2, 1), completed=False, error="boom", max_attempts=3
    )
    assert status is ItemStatus.PENDING
    retry = store.claim(batch_id, 10)
    assert [(c.seq, c.attempt) for c in retry] == [(2, 2)]
    store.finish(batch_id, 2, retry[0].job_id, completed=True, max_attempts=3)
    assert [c.seq for c in store.claim(batch_id, 10)] == [4]


def test_the_last_failed_attempt_goes_to_the_dead_letter_with_its_error(engine: Engine) -> None:  # noqa: F811
    store = BatchStore(engine)
    batch_id = _batch(store, [_item(0)])
    for attempt in (1, 2):
        [claim] = store.claim(batch_id, 1)
        assert claim.attempt == attempt
        status = store.finish(
            batch_id, 0, claim.job_id, completed=False, error=f"e{attempt}", max_attempts=2
        )
    assert status is ItemStatus.DEAD_LETTER
    assert store.claim(batch_id, 1) == []
    [item] = store.items(batch_id)
    assert item.status == ItemStatus.DEAD_LETTER.value and item.last_error == "e2"
    assert item.attempts == 2


def test_a_repeated_or_stale_outcome_changes_nothing(engine: Engine) -> None:  # noqa: F811
    store = BatchStore(engine)
    batch_id = _batch(store, [_item(0)])
    [claim] = store.claim(batch_id, 1)
    assert store.finish(batch_id, 0, "someone-else", completed=True, max_attempts=3) is None
    assert store.finish(batch_id, 0, claim.job_id, completed=True, max_attempts=3) is (
        ItemStatus.COMPLETED
    )
    assert store.finish(batch_id, 0, claim.job_id, completed=False, max_attempts=3) is None
    assert store.counts(batch_id)[ItemStatus.COMPLETED] == 1


def test_item_keys_are_unique_within_a_batch_only(engine: Engine) -> None:  # noqa: F811
    store = BatchStore(engine)
    _batch(store, [_item(0, item_key="doc-1")])  # another batch may use the same key
    with pytest.raises(StoreRejectedError):
        _batch(store, [_item(0, item_key="doc-1"), _item(1, item_key="doc-1")])


def test_concurrent_claimers_never_take_the_same_item(engine: Engine) -> None:  # noqa: F811
    store = BatchStore(engine)
    batch_id = _batch(store, [_item(i) for i in range(60)])
    claimed: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def claimer() -> None:
        barrier.wait()
        while batch := store.claim(batch_id, 3):
            with lock:
                claimed.extend(c.seq for c in batch)

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == list(range(60))  # each item exactly once

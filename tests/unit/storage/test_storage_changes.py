"""The commit log as row changes (storage/changes.py): applied in order from any position to the
state at that position, the changes reproduce the final state, for every table, including
tables dropped since the stream's start (decoded by the schema their drop record carries)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import Change, Column, Schema, Store
from storage.changes import CREATE_TABLE, DELETE_ROW, DROP_TABLE, PUT_ROW, Schemas, record_changes
from storage.keycode import encode
from storage.memory import MemoryEngine

TABLES = ["a", "b"]
State = dict[str, dict[tuple[Any, ...], dict[str, Any]]]


def schema(name: str, wide: bool) -> Schema:
    cols = [Column("id", "int64"), Column("v", "string")]
    if wide:  # a table re-created under the same name with another shape
        cols.append(Column("w", "int64"))
    return Schema.build(name, cols, ["id"])


step_st = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(TABLES), st.booleans()),
    st.tuples(st.just("drop"), st.sampled_from(TABLES)),
    st.tuples(st.just("put"), st.sampled_from(TABLES), st.integers(0, 8), st.text(max_size=2)),
    st.tuples(st.just("delete"), st.sampled_from(TABLES), st.integers(0, 8)),
)


def commit(store: Store, steps: list[tuple[Any, ...]], model: State) -> None:
    changes: list[Change] = []
    with store.write() as w:
        for step in steps:
            kind, name = step[0], step[1]
            t = w.table(name)
            if kind == "create" and t is None:
                w.create_table(schema(name, step[2]))
                model[name] = {}
                changes.append(Change(name, "create_table", ()))
            elif kind == "drop" and t is not None:
                w.drop_table(t)
                del model[name]
                changes.append(Change(name, "drop_table", (t.encode(),)))  # as DropTable does
            elif kind == "put" and t is not None:
                values = [step[2], step[3]] + ([step[2] * 10] if len(t.columns) == 3 else [])
                w.put(t, encode((step[2],)), w.next_position(), values)
                model[name][(step[2],)] = dict(zip([c.name for c in t.columns], values,
                                                   strict=True))
                changes.append(Change(name, "put", (step[2],)))
            elif kind == "delete" and t is not None and w.delete(t, encode((step[2],))):
                model[name].pop((step[2],), None)
                changes.append(Change(name, "del", (step[2],)))
        if changes:
            w.append_log(ts=1.0, node="n", changes=changes)


def position(store: Store) -> int:
    with store.read() as view:
        return view.commit_position()


def apply(state: State, c: Any) -> None:
    if c.kind == CREATE_TABLE:
        state[c.table] = {}
    elif c.kind == DROP_TABLE:
        del state[c.table]
    elif c.kind == PUT_ROW:
        state[c.table][c.key] = c.values
    elif c.kind == DELETE_ROW:
        state[c.table].pop(c.key, None)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(step_st, min_size=1, max_size=5), max_size=12), st.data())
def test_the_changes_from_any_position_reproduce_the_final_state(history, data) -> None:  # type: ignore[no-untyped-def]
    store = Store(MemoryEngine())
    model: State = {}
    states = [{}]  # the state after each position (index = position)
    for steps in history:
        before = position(store)
        commit(store, steps, model)
        if position(store) > before:
            states.append({t: dict(rows) for t, rows in model.items()})
    last = len(states) - 1
    start = data.draw(st.integers(1, last + 1))
    with store.read() as view:
        schemas = Schemas(view.tables())  # the catalog now, as a stream starting now has it
        records = list(view.log(start)) if start <= last else []

        def find_dropped(table_id: int) -> None:
            for r in view.log(start):
                schemas.learn_dropped(r)

        got = [c for r in records for c in record_changes(r, schemas, find_dropped=find_dropped)]
    state = {t: dict(rows) for t, rows in states[start - 1].items()}
    for c in got:
        assert not c.table.startswith("#"), f"a row of an unknown table: {c}"
        apply(state, c)
    assert state == model
    places = [(c.position, c.index) for c in got]
    assert places == sorted(set(places))  # each once, in order


def test_what_is_not_a_row_change_is_left_out() -> None:
    """Idempotency records and counters are in the log's ops but are not changes."""
    store = Store(MemoryEngine())
    with store.write() as w:
        t = w.create_table(schema("a", False))
        w.put(t, encode((1,)), w.next_position(), [1, "x"])
        w.record_idempotent("k", {"pos": 1}, ts=1.0)
        w.append_log(ts=1.0, node="n", changes=[Change("a", "create_table", ())])
    with store.read() as view:
        (record,) = list(view.log(1))
    kinds = [c.kind for c in record_changes(record, Schemas())]
    assert kinds == [CREATE_TABLE, PUT_ROW]

from __future__ import annotations

import datetime as dt

from bson import Binary, ObjectId

from streaming.events import (
    Changes,
    changes_from_description,
    decode,
    diff,
    epoch_ms,
    full_set,
    normalize,
)


def test_decode_unwraps_nx_dates_object_ids_and_binary_deeply() -> None:
    raw = {
        "_id": {"__neosqlite_objectid__": True, "id": "6b025c631aca9478d164d22f"},
        "when": {"$date": "2026-11-22T03:07:15.796000"},
        "blob": {"__neosqlite_binary__": True, "data": "eHg=", "subtype": 0},
        "history": [{"at": {"$date": "2026-11-22T03:07:15Z"}}],
        "plain": {"a": 1},
    }
    doc = decode(raw)
    assert doc["_id"] == ObjectId("6b025c631aca9478d164d22f")
    assert doc["when"] == dt.datetime(2026, 11, 22, 3, 7, 15, 796000, tzinfo=dt.UTC)
    assert doc["blob"] == Binary(b"xx", 0)
    assert doc["history"][0]["at"].tzinfo is not None
    assert doc["plain"] == {"a": 1}


def test_diff_nested_fields_arrays_and_removed_fields() -> None:
    before = {"_id": 1, "status": "pending", "payment": {"state": "none", "tries": 0},
              "items": [1, 2], "note": "x", "flag": 1}
    after = {"_id": 1, "status": "paid", "payment": {"state": "captured", "tries": 0},
             "items": [1, 2, 3], "flag": True, "new": {"a": 1}}
    changes = diff(before, after)
    assert changes.set == {"status": "paid", "payment.state": "captured", "items": [1, 2, 3],
                           "flag": True, "new": {"a": 1}}
    assert changes.unset == ("note",)


def test_diff_of_identical_documents_is_empty() -> None:
    doc = {"_id": 1, "a": {"b": [1, {"c": 2}]}}
    assert not diff(doc, {"_id": 1, "a": {"b": [1, {"c": 2}]}})


def test_diff_replaces_a_subdocument_emptied_or_turned_scalar() -> None:
    assert diff({"a": {"b": 1}}, {"a": {}}).set == {"a": {}}
    assert diff({"a": {"b": 1}}, {"a": 5}).set == {"a": 5}
    assert diff({"a": 5}, {"a": {"b": 1}}).set == {"a": {"b": 1}}


def test_changes_from_update_description() -> None:
    changes = changes_from_description(
        {"updatedFields": {"status": "paid", "payment.state": "ok"}, "removedFields": ["tmp"]},
        {"_id": 1, "status": "paid", "payment": {"state": "ok"}})
    assert changes == Changes({"status": "paid", "payment.state": "ok"}, ("tmp",))
    assert changes.as_dict() == {"set": {"status": "paid", "payment.state": "ok"},
                                 "unset": ["tmp"]}


def test_full_set_and_epoch_ms() -> None:
    assert full_set({"_id": 1, "a": 2}).set == {"a": 2}
    assert epoch_ms(dt.datetime(1970, 1, 1, 0, 0, 1)) == 1000
    assert epoch_ms("not a date") is None


def test_changes_from_update_description_sends_a_truncated_array_whole() -> None:
    # A replica set reports `$pop`/`$pull`-style shrinking as truncatedArrays without the
    # new value; dropping it (as before) left a subscriber with the old, longer array.
    doc = {"_id": "o1", "history": [{"status": "pending"}], "tags": ["a", "b"]}
    changes = changes_from_description(
        {"updatedFields": {"history.0.at": "t1", "tags.1": "b"}, "removedFields": [],
         "truncatedArrays": [{"field": "history", "newSize": 1}]}, doc)
    assert changes.set == {"history": [{"status": "pending"}], "tags.1": "b"}


def test_normalize_diffs_against_the_previous_version_and_hides_fields() -> None:
    raw = {"_id": {"_data": "T1"}, "operationType": "update", "documentKey": {"_id": "p1"},
           "fullDocument": {"_id": "p1", "stock": 4, "holds": ["o1"]}, "updateDescription": None}
    previous = {"_id": "p1", "stock": 5}
    change = normalize(raw, previous=lambda key: previous, hidden=frozenset({"holds"}))
    assert change is not None and not change.empty
    assert change.doc == {"_id": "p1", "stock": 4}
    assert change.before == previous and change.changes == Changes({"stock": 4}, ())
    hidden_only = {**raw, "fullDocument": {"_id": "p1", "stock": 5, "holds": ["o2"]}}
    quiet = normalize(hidden_only, previous=lambda key: previous, hidden=frozenset({"holds"}))
    assert quiet is not None and quiet.empty
    assert normalize({"operationType": "invalidate"}, previous=lambda key: None) is None


def test_apply_changes_follows_the_documents_shape_and_disambiguated_paths() -> None:
    from streaming.events import apply_changes

    before = {"_id": 1, "lines": [{"qty": 1}, {"qty": 2}], "codes": {"0": "a"}, "a.b": 1}
    after = apply_changes(before, Changes({"lines.1.qty": 5, "codes.0": "z", "a.b": 2},
                                          ("lines.0.qty",)),
                          {"a.b": ["a.b"]})  # a field whose name has a dot
    assert after == {"_id": 1, "lines": [{}, {"qty": 5}], "codes": {"0": "z"}, "a.b": 2}
    assert before["lines"][1] == {"qty": 2}  # a copy: the previous version is untouched

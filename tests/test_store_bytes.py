"""The exact bytes a commit writes: a format other tools read, so any change must be deliberate."""

from __future__ import annotations

from pathlib import Path

from selfinstruct.records import AcceptedTask, Rejection, RequestRecord
from selfinstruct.store import RunStore

NOW = "2025-01-02T03:04:05Z"
URL = "http://127.0.0.1:8000/v1"
FP = "0123456789abcdef"


def test_a_commit_writes_these_exact_lines(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        store.commit(
            RequestRecord(request=0, outcome="answered", endpoint=URL, finish_reason="stop", prompt_tokens=812,
                          completion_tokens=2048, candidates=4, latency=1.23456, created=NOW, settings=FP),  # fmt: skip
            [
                AcceptedTask(
                    id="task-000007", instruction="Décris un café « parisien » en 日本語.", input="",
                    output="Un lieu — calme.", request=0, most_similar_instruction='Describe a "quiet" place.\n',
                    rouge_l=0.30769230769230776, nearest_id="seed_task_3", model="Qwen/Qwen2.5-0.5B-Instruct",
                    endpoint=URL, finish_reason="stop", created=NOW, settings=FP,
                ),  # fmt: skip
                # Every optional field None; a lone surrogate makes the whole line \u-escaped ASCII.
                AcceptedTask(id="task-000008", instruction="Name this emoji \ud83d, please.", input="x", output="café",
                             request=0),  # fmt: skip
            ],
            [
                Rejection(
                    reason="near_duplicate", detail="ROUGE-L 0.812 > 0.7", instruction="Nommez \ud83d un oiseau.",
                    input="", output="Le kiwi.", request=0, rouge_l=0.8125,
                    most_similar_instruction="Nommez un oiseau.", nearest_id="task-000003", created=NOW, settings=FP,
                ),  # fmt: skip
                Rejection(reason="too_short", detail="", instruction="", input="", output="", request=0),
                Rejection(reason="no_output", detail="", instruction="List two rivers.", input="Europe", output="",
                          request=0, created=NOW, settings=FP, stage="instances", task_id="task-000002"),  # fmt: skip
            ],
        )
    assert (tmp_path / "requests.jsonl").read_bytes() == (
        b'{"schema":2,"request":0,"outcome":"answered","endpoint":"http://127.0.0.1:8000/v1","finish_reason":"stop",'
        b'"prompt_tokens":812,"completion_tokens":2048,"candidates":4,"latency":1.235,"created":"2025-01-02T03:04:05Z",'
        b'"settings":"0123456789abcdef"}\n'
    )
    assert (tmp_path / "instructions.jsonl").read_bytes() == (
        '{"schema":2,"id":"task-000007","instruction":"Décris un café « parisien » en 日本語.","input":"",'
        '"output":"Un lieu — calme.","most_similar_instruction":"Describe a \\"quiet\\" place.\\n",'
        '"rouge_l":0.30769230769230776,"nearest_id":"seed_task_3","request":0,"model":"Qwen/Qwen2.5-0.5B-Instruct",'
        '"endpoint":"http://127.0.0.1:8000/v1","finish_reason":"stop","created":"2025-01-02T03:04:05Z",'
        '"settings":"0123456789abcdef"}\n'
    ).encode() + (
        rb'{"schema":2,"id":"task-000008","instruction":"Name this emoji \ud83d, please.","input":"x",'
        rb'"output":"caf\u00e9","most_similar_instruction":"","rouge_l":0.0,"request":0,"model":"","endpoint":"",'
        rb'"created":""}' b"\n"
    )
    assert (tmp_path / "rejected.jsonl").read_bytes() == (
        rb'{"schema":2,"reason":"near_duplicate","detail":"ROUGE-L 0.812 > 0.7",'
        rb'"instruction":"Nommez \ud83d un oiseau.","input":"","output":"Le kiwi.","request":0,"rouge_l":0.8125,'
        rb'"most_similar_instruction":"Nommez un oiseau.","nearest_id":"task-000003","created":"2025-01-02T03:04:05Z",'
        rb'"settings":"0123456789abcdef"}' b"\n"
        b'{"schema":2,"reason":"too_short","detail":"","instruction":"","input":"","output":"","request":0}\n'
        b'{"schema":2,"stage":"instances","task_id":"task-000002","reason":"no_output","detail":"",'
        b'"instruction":"List two rivers.","input":"Europe","output":"","request":0,"created":"2025-01-02T03:04:05Z",'
        b'"settings":"0123456789abcdef"}\n'
    )

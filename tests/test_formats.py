import json
from pathlib import Path

import pytest

from tuning.formats import DataError, read_chats, shipped_files


def test_origin_json_format(tmp_path: Path) -> None:
    path = tmp_path / "origin.json"
    path.write_text(
        json.dumps(
            [
                {"context": "用户:我的订单什么时候到?\n客服:", "response": "您可通过订单号查询"},
                {"context": "用户:你好\n客服:您好\n用户:如何退换货?\n客服:", "response": "7天内可无理由退货"},
            ],
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    chats = read_chats(path)
    assert chats[0] == [
        {"role": "user", "content": "我的订单什么时候到?"},
        {"role": "assistant", "content": "您可通过订单号查询"},
    ]
    assert [m["role"] for m in chats[1]] == ["user", "assistant", "user", "assistant"]


def test_chat_jsonl_and_csv(tmp_path: Path) -> None:
    jsonl = tmp_path / "chats.jsonl"
    jsonl.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n"
    )
    csv = tmp_path / "pairs.csv"
    csv.write_text("instruction,response\nwhere is my order?,Check My Orders.\n")
    assert read_chats(jsonl)[0][-1]["content"] == "hello"
    assert read_chats(csv) == [
        [{"role": "user", "content": "where is my order?"}, {"role": "assistant", "content": "Check My Orders."}]
    ]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.json", "{not json", "not valid JSON"),
        ("bad.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n', "no response"),
        ("bad.csv", "instruction,answer\nq,a\n", r"missing column\(s\) response"),
        ("empty.csv", "instruction,response\nq,\n", "row 2: no response"),
        ("bad.txt", "x", "unknown format"),
        ("list.json", '{"a": 1}', "expected a JSON list"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_chats(path)


def test_shipped_sample_data_is_large_enough() -> None:
    import csv

    rows = list(csv.DictReader(open(Path(__file__).parent.parent / "data/sample/faq.csv", encoding="utf-8")))
    assert len(rows) >= 300 and len({r["intent"] for r in rows}) >= 30
    dialogues = [c for p in shipped_files() if p.suffix == ".jsonl" for c in read_chats(p)]
    assert len(dialogues) >= 50 and all(len(c) >= 4 for c in dialogues)
    pairs = {(r["instruction"], r["response"]) for r in rows}
    assert ("我的订单什么时候到?", "您可通过订单号在'我的订单'页面查询物流信息") in pairs
    assert ("如何退换货?", "7天内可无理由退货,请在APP提交申请并寄回商品") in pairs

"""The original SlackCallback usage against the loopback Slack server."""

from __future__ import annotations

from pathlib import Path

from slack_sdk import WebClient

from conftest import TOKEN
from notifier import SlackCallback
from slack_server import SlackServer
from tiny import make_trainer


def test_original_usage_posts_four_messages(slack_server: SlackServer, tmp_path: Path) -> None:
    client = WebClient(token=TOKEN, base_url=slack_server.base_url)
    callback = SlackCallback("#train", client=client)
    make_trainer(tmp_path / "run-a", [callback]).train()
    assert callback.flush(10)
    requests = slack_server.posted()
    texts = [r.body["text"] for r in requests]
    assert len(texts) == 4, texts
    assert texts[0].startswith("🚀 Training started: run-a")
    assert texts[1].startswith("📈 run-a: epoch 1/2")
    assert texts[2].startswith("📈 run-a: epoch 2/2")
    assert texts[3].startswith("✅ Training finished: run-a")
    for request, text in zip(requests, texts, strict=True):
        assert request.body["channel"] == "#train"
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert "run-a" in text and str(tmp_path / "run-a") in text
        assert "None" not in text

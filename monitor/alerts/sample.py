"""The sample alert `monitor test-alert` sends: Persian text, a Latin acronym, a link."""

from __future__ import annotations

import uuid
from datetime import datetime

from monitor.alerts.message import AlertMessage, ArticleView


def sample_alert(channel: str, now: datetime) -> AlertMessage:
    return AlertMessage(
        delivery_id=0,
        message_id="test_" + uuid.uuid4().hex,
        channel=channel,
        watch="test-alert",
        kind="new",
        matched=("سازمان همکاری اسلامی", "OIC"),
        article=ArticleView(
            id=0,
            title="پیام آزمایشی: نشست سازمان همکاری اسلامی (OIC) در جده",
            link="https://example.org/monitor/test-alert",
            summary="این یک هشدار آزمایشی از monitor است. اگر آن را می‌بینید، این کانال "
                    "درست پیکربندی شده است.",
            published=now,
            feed="monitor test-alert",
            language="fa",
        ),
        created_at=now,
        story_id=0,
        other_sources=("irna", "isna"),
    )

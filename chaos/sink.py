"""The SMTP server the soak's e-mail jobs deliver to: a real one on a free local port,
counting deliveries by subject (each e-mail job's subject names its load key)."""

from __future__ import annotations

from collections import Counter

from tests.support import SmtpSink


class CountingSmtpSink(SmtpSink):
    def deliveries(self) -> Counter[str]:
        """How many times each subject was delivered."""
        return Counter(str(message["Subject"]) for message in list(self.messages))

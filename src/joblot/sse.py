"""Reading Server-Sent Events as the WHATWG EventSource does: bytes in, whole events out."""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

# Lines end in CRLF, LF or CR, and nothing else: not str.splitlines, which also breaks at
# U+2028 and friends that JSON data may carry unescaped.
LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event: its type (`message` when unnamed), data and last event id."""

    event: str
    data: str
    id: str | None


class EventStreamParser:
    """Feed it the stream's bytes in chunks of any size; it returns each complete event.

    `retry_ms` is the reconnection time the server asked for, `last_id` the id to send back
    as `Last-Event-ID`, and `comments` counts comment lines (keep-alives) seen.
    """

    def __init__(self, last_id: str | None = None) -> None:
        self.last_id = last_id
        self.retry_ms: int | None = None
        self.comments = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # text after the last line end seen
        self._started = False  # a byte order mark is skipped only at the very start
        self._after_cr = False  # the last text ended in CR: a LF next is not another line
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = last_id

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """The events completed by `chunk`."""
        text = self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if text:
            if self._after_cr and text.startswith("\n"):  # the rest of a CRLF cut in two
                text = text[1:]
            self._after_cr = text.endswith("\r")
        lines = LINE_END.split(self._pending + text)
        self._pending = lines.pop()
        events: list[ServerSentEvent] = []
        for line in lines:
            found = self._line(line)
            if found is not None:
                events.append(found)
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        """Apply one line; the event it dispatches, if it is blank and ends one."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        """End the event being read: returned if it has data, forgotten if not."""
        self.last_id = self._id
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        if not data:
            return None
        return ServerSentEvent(event=event, data="\n".join(data), id=self.last_id or None)

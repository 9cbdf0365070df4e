"""A response's own context (response.input, out of band): the conversation with only the instructions and
the referenced or inline items laid out for it, the rest hidden until it is done. Mixed into
streaming.session.Session, whose state it uses."""

from __future__ import annotations

import contextlib

from streaming.session_types import new_id

__all__ = ["INSTRUCTIONS_ID", "ResponseContexts"]

INSTRUCTIONS_ID = "instructions"  # the system turn's item: always first, never shown to the client


class ResponseContexts:
    def _context_problem(self, context: list) -> tuple[str, str, str] | None:
        """Why a context cannot be honoured: (code, message, param), or None."""
        with self.handle.lock:
            order = {it.id: i for i, it in enumerate(self.handle.conversation.items)}
        last = -1
        for i, entry in enumerate(context):
            if isinstance(entry, str):
                item, where = self.item(entry), f"response.input.{i}.id"
                if item is None:
                    return "item_not_found", f"no item {entry!r} to reference", where
                if item.type != "message":
                    return "invalid_value", f"a {item.type} item cannot be referenced (messages can)", where
                if order[entry] < last:
                    return "invalid_value", "item references must follow the conversation's order", where
                last = order[entry]
        return None

    def _isolate(self, response_id: str, context: list) -> None:
        """Lay out only the instructions and `context` for this response: inline messages join as items of
        their own, placed where they stand among the references (no view: never shown to the client); every
        other item is hidden until the response is done. The row is rebuilt, now and after."""
        anchor, added = INSTRUCTIONS_ID, []
        for entry in context:
            if not isinstance(entry, str):
                role, text, audio = entry
                entry = new_id("ctx")
                self.handle.add_item(entry, role, text=text, audio=audio, after=anchor)
                added.append(entry)
            anchor = entry
        keep = {INSTRUCTIONS_ID, *(e for e in context if isinstance(e, str)), *added}
        with self.handle.lock:
            hidden = [it for it in self.handle.conversation.items if it.id not in keep and not it.hidden]
            for it in hidden:
                it.hidden = True
            self.handle.conversation.stale = True
        self._contexts[response_id] = (hidden, added)

    def _restore(self, response_id: str) -> None:
        if response_id not in self._contexts:
            return
        hidden, added = self._contexts.pop(response_id)
        for item_id in added:
            with contextlib.suppress(KeyError):
                self.handle.delete_item(item_id)
        with self.handle.lock:
            for it in hidden:
                it.hidden = False
            self.handle.conversation.stale = True

"""A conversation's history in the reference's chat layout, and how much of it a backbone row holds.

    <|startoftext|> then, per item, <|im_start|>{role}\\n {content...} <|im_end|>\\n

Content is kept as segments: text ids, encoded user audio (input embeddings, so that a clip is never
encoded twice), and generated audio frames. The layout is a pure function of the items; `position`
says how many of its leading positions the row's state holds. Appending only adds positions at the
end, so the next prefill is just what is new; an edit inside the held prefix (a truncated or deleted
item, new instructions) marks the row stale, and the next prefill rebuilds it from the start, which
is exactly what the reference does on every turn. The layout ends with the first open item (a response
being generated): items added while it runs come after it once it is closed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from models.config import EOA
from models.generation import Modality
from models.tokenizer import TextTokenizer

__all__ = ["Conversation", "Item", "Segment"]


@dataclass
class Segment:
    """One run of positions: text ids, audio-in embeddings [n, hidden], or audio-out frames [n, 8]."""

    kind: Modality
    data: list[int] | Tensor

    def __len__(self) -> int:
        return len(self.data) if isinstance(self.data, list) else int(self.data.shape[0])

    def __getitem__(self, index: slice) -> Segment:
        return Segment(self.kind, self.data[index])


@dataclass
class Item:
    id: str
    role: str  # system | user | assistant
    segments: list[Segment] = field(default_factory=list)
    closed: bool = True  # an assistant item is open while it is being generated
    view: object = field(default=None, compare=False, repr=False)  # the serving layer's own data; never read here
    hidden: bool = False  # not laid out: a view of content another item holds (a call inside an assistant turn)

    def append_generated(self, kind: Modality, value: int | tuple[int, ...]) -> None:
        """One generated item (a text token or an 8-code frame), merged into the last segment."""
        if kind == Modality.TEXT:
            if self.segments and self.segments[-1].kind == Modality.TEXT:
                self.segments[-1].data.append(int(value))
            else:
                self.segments.append(Segment(Modality.TEXT, [int(value)]))
        else:
            frame = torch.tensor([value], dtype=torch.long)
            if self.segments and self.segments[-1].kind == Modality.AUDIO_OUT:
                last = self.segments[-1]
                last.data = torch.cat([last.data, frame])
            else:
                self.segments.append(Segment(Modality.AUDIO_OUT, frame))



class Conversation:
    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer = tokenizer
        self.items: list[Item] = []
        self.position = 0  # positions of the layout that the row's state holds
        self.stale = False  # the held prefix no longer matches the layout: rebuild before prefilling
        self._wrappers: dict[str, list[int]] = {}

    # ---- editing
    def add(self, item: Item, *, after: str | None = None, first: bool = False) -> None:
        """Append an item, or place it after the item `after` (KeyError if absent), or first. Ids are unique
        (ValueError)."""
        if any(it.id == item.id for it in self.items):
            raise ValueError(f"an item with id {item.id!r} exists")
        if first:
            # Any item ahead of it may be held, or being prefilled right now: rebuild.
            self.stale = self.stale or bool(self.items)
            self.items.insert(0, item)
            return
        if after is None:
            self.items.append(item)
            return
        index = self.index(after) + 1
        if index < len(self.items):
            self.stale = True  # inserted inside the history
        self.items.insert(index, item)

    def index(self, item_id: str) -> int:
        for i, it in enumerate(self.items):
            if it.id == item_id:
                return i
        raise KeyError(item_id)

    def get(self, item_id: str) -> Item:
        return self.items[self.index(item_id)]

    def delete(self, item_id: str) -> Item:
        item = self.items.pop(self.index(item_id))
        self.stale = True
        return item

    def truncate_audio(self, item_id: str, frames: int) -> str:
        """Keep an assistant item's content up to its first `frames` played audio frames, in generation
        order (what the user heard); later text and audio are dropped. End-of-audio frames are not played,
        so they do not count. Returns the text that is kept (the transcript heard)."""
        item = self.get(item_id)
        kept: list[Segment] = []
        left = frames
        for seg in item.segments:
            if seg.kind == Modality.AUDIO_OUT:
                if left <= 0:
                    break
                played = (seg.data[:, 0] != EOA).cumsum(0)
                n = int((played < left).sum()) + 1 if int(played[-1]) >= left else len(seg)
                kept.append(seg[:n])
                left -= int(played[n - 1])
            elif left > 0:
                kept.append(seg)
        item.segments = kept
        self.stale = True
        return self.tokenizer.decode([i for s in kept if s.kind == Modality.TEXT for i in s.data])

    def prepend(self, item: Item, segment: Segment) -> bool:
        """Put an encoded clip at the start of an item's content (audio comes before text); False if the
        item has left the conversation meanwhile."""
        if not any(it is item for it in self.items):
            return False
        item.segments.insert(0, segment)
        if self.position > self.start_of(item.id):
            self.stale = True  # the row already holds positions after this item's start
        return True

    def drop_oldest(self, keep: tuple[str, ...] = ()) -> Item | None:
        """Drop the oldest item that is neither a system item nor in `keep` (to fit the context)."""
        for i, it in enumerate(self.items):
            if it.role != "system" and it.id not in keep:
                self.stale = True
                return self.items.pop(i)
        return None

    # ---- layout
    def _wrap(self, key: str) -> list[int]:
        if key not in self._wrappers:
            self._wrappers[key] = {"start": self.tokenizer.start, "end": self.tokenizer.turn_end}.get(
                key, lambda: self.tokenizer.turn_start(key))()
        return self._wrappers[key]

    def layout(self) -> list[Segment]:
        return self._layout(self.items)

    def _layout(self, items: list[Item]) -> list[Segment]:
        out = [Segment(Modality.TEXT, self._wrap("start"))]
        for it in items:
            if it.hidden:
                continue
            out.append(Segment(Modality.TEXT, self._wrap(it.role)))
            out.extend(it.segments)
            if not it.closed:
                break  # being generated: the items after it (added meanwhile) join once it closes
            out.append(Segment(Modality.TEXT, self._wrap("end")))
        return out

    def length(self) -> int:
        return sum(len(s) for s in self.layout())

    def start_of(self, item_id: str) -> int:
        """The layout position where an item's turn begins."""
        index = self.index(item_id)
        return sum(len(s) for s in self._layout(self.items[:index]))

    def pending(self, limit: int | None = None) -> list[Segment]:
        """The layout's positions beyond what the row holds (all of it when stale), at most `limit`."""
        out, skip = [], 0 if self.stale else self.position
        left = self.length() if limit is None else limit
        for seg in self.layout():
            if skip >= len(seg):
                skip -= len(seg)
                continue
            if left <= 0:
                break
            part = seg[skip:skip + left] if skip or len(seg) - skip > left else seg
            out.append(part)
            left -= len(part)
            skip = 0
        return out

    def pending_length(self) -> int:
        """How many positions the next prefill has to run."""
        return self.length() - (0 if self.stale else self.position)

    def reset(self) -> None:
        """The row was reset: it holds nothing."""
        self.position = 0
        self.stale = False

    def held(self, n: int) -> None:
        """n more layout positions are now in the row's state."""
        self.position += n


def embed_segments(model, segments: list[Segment]) -> Tensor:
    """Input embeddings [positions, hidden] of segments (model: LFM2AudioModel)."""
    parts = []
    with torch.inference_mode():
        for seg in segments:
            if seg.kind == Modality.TEXT:
                parts.append(model.embed_text(torch.tensor(seg.data, device=model.device)))
            elif seg.kind == Modality.AUDIO_OUT:
                parts.append(model.embed_frames(seg.data.to(model.device)))
            else:
                parts.append(seg.data.to(model.device, model.dtype))
    return torch.cat(parts) if parts else torch.zeros(0, model.cfg.lfm.hidden_size, dtype=model.dtype)

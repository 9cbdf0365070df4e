"""The conversation layout and its prefix bookkeeping."""

import torch

from models.conversation import Conversation, Item, Segment
from models.generation import Modality
from models.tokenizer import TextTokenizer, build_byte_tokenizer


def _conv() -> Conversation:
    return Conversation(TextTokenizer(build_byte_tokenizer()))


def _ids(segments) -> list:
    out = []
    for s in segments:
        out.extend(s.data if s.kind == Modality.TEXT else [f"<{s.kind.name}x{len(s)}>"])
    return out


def test_layout_is_the_reference_chat_layout():
    c = _conv()
    tok = c.tokenizer
    c.add(Item("s", "system", [Segment(Modality.TEXT, tok.encode("Hi"))]))
    c.add(Item("u", "user", [Segment(Modality.AUDIO_IN, torch.zeros(3, 4))]))
    c.add(Item("a", "assistant", closed=False))
    expected = (tok.encode("<|startoftext|>") + tok.encode("<|im_start|>system\n") + tok.encode("Hi")
                + tok.encode("<|im_end|>\n") + tok.encode("<|im_start|>user\n") + ["<AUDIO_INx3>"]
                + tok.encode("<|im_end|>\n") + tok.encode("<|im_start|>assistant\n"))
    assert _ids(c.layout()) == expected


def test_pending_is_what_the_row_does_not_hold_and_edits_make_it_stale():
    c = _conv()
    c.add(Item("u", "user", [Segment(Modality.TEXT, [300, 301, 302])]))
    total = c.length()
    c.held(total - 2)
    assert _ids(c.pending()) == _ids(c.layout())[-2:]
    a = Item("a", "assistant", closed=False)
    c.add(a)
    a.append_generated(Modality.TEXT, 310)
    a.append_generated(Modality.AUDIO_OUT, (1,) * 8)
    a.append_generated(Modality.AUDIO_OUT, (2,) * 8)
    a.append_generated(Modality.TEXT, 311)
    assert [len(s) for s in a.segments] == [1, 2, 1]
    c.held(c.length() - c.position)
    assert not c.pending() and not c.stale
    c.truncate_audio("a", 1)  # heard one frame: later text and audio go
    assert [len(s) for s in a.segments] == [1, 1] and c.stale
    assert len(c.pending()) == len(c.layout())
    c.reset()
    assert c.position == 0 and not c.stale
    tok = c.tokenizer
    assert c.start_of("u") == len(tok.start())
    assert c.start_of("a") == len(tok.start()) + len(tok.turn_start("user")) + 3 + len(tok.turn_end())


def test_drop_oldest_keeps_system_and_the_protected_item():
    c = _conv()
    for i, role in enumerate(["system", "user", "assistant", "user"]):
        c.add(Item(f"i{i}", role))
    assert c.drop_oldest(keep=("i1",)).id == "i2"
    assert [it.id for it in c.items] == ["i0", "i1", "i3"]

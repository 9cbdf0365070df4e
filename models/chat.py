"""A single conversation on one backbone row, with its state kept across turns.

The history is a list of segments (text ids, encoded user audio, generated audio frames) in the
reference's chat layout (lfm2-audio-model.md 4.1, 4.6). Only what is new since the last call is
prefilled; `rebuild()` recomputes the row from the whole history, which is what the reference does on
every turn (and what the engine does when it drops old turns to fit the context).

This is the simple, sequential driver used by `lfm-audio generate`, the benchmarks and the parity
tests; the serving engine batches the same steps (models/decode.py) across many rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from models.conversation import Conversation, Item, Segment, embed_segments
from models.decode import RowSampling, prefill, sample_items
from models.generation import Finish, Generation, Modality
from models.lfm2 import BackboneState
from models.lfm2_audio import LFM2AudioModel
from models.mel import log_mel
from models.sampling import SamplingParams
from models.tokenizer import TextTokenizer

if TYPE_CHECKING:
    from models.compiled import CompiledSteps

__all__ = ["ASR_PROMPT", "CHAT_AUDIO_SAMPLING", "CHAT_PROMPT", "TTS_AUDIO_SAMPLING", "TTS_VOICES", "Chat"]

CHAT_PROMPT = "Respond with interleaved text and audio."
ASR_PROMPT = "Perform ASR."
# Recommended audio sampling (model card): interleaved chat, and TTS. Text is greedy in every mode.
CHAT_AUDIO_SAMPLING = SamplingParams(1.0, 4)
TTS_AUDIO_SAMPLING = SamplingParams(0.8, 64)
TTS_VOICES = {
    "us_male": "Perform TTS. Use the US male voice.",
    "us_female": "Perform TTS. Use the US female voice.",
    "uk_male": "Perform TTS. Use the UK male voice.",
    "uk_female": "Perform TTS. Use the UK female voice.",
}


@dataclass
class Chat:
    model: LFM2AudioModel
    tokenizer: TextTokenizer
    state: BackboneState
    row: int = 0
    seed: int | None = None
    compiled: CompiledSteps | None = None  # models/compiled.py: static-shape steps over all state rows

    def __post_init__(self) -> None:
        self.generator = torch.Generator(device=self.model.device)
        if self.seed is not None:
            self.generator.manual_seed(self.seed)
        self.finish: Finish | None = None
        self.restart()

    def restart(self) -> None:
        """An empty conversation on the same row (the row's state is reset)."""
        self.conv = Conversation(self.tokenizer)
        self.state.reset_rows([self.row])

    @property
    def position(self) -> int:
        return self.conv.position

    # ---- building the conversation (lfm2-audio-model.md 4.1)
    def encode_audio(self, wave_16k: Tensor) -> Segment:
        mel = log_mel(wave_16k.float(), self.model.cfg.preprocessor)
        with torch.inference_mode():
            return Segment(Modality.AUDIO_IN, self.model.encode_audio([mel])[0])

    def turn(self, role: str, *, text: str | None = None, audio: Tensor | None = None) -> Item:
        """A closed turn (system or user): audio first, then text, as separate segments."""
        item = Item(f"item_{len(self.conv.items)}", role)
        if audio is not None:
            item.segments.append(self.encode_audio(audio))
        if text is not None:
            item.segments.append(Segment(Modality.TEXT, self.tokenizer.encode(text)))
        self.conv.add(item)
        return item

    # ---- generating
    def respond(
        self,
        *,
        interleaved: bool,
        max_new_tokens: int,
        text: SamplingParams | None = None,
        audio: SamplingParams | None = None,
    ) -> Iterator[int | tuple[int, ...]]:
        """Open an assistant turn and yield each generated item (text token or 8-code frame) exactly
        as the reference's generate_interleaved / generate_sequential do; the turn is then closed as
        the reference closes it (section 4.6)."""
        item = Item(f"item_{len(self.conv.items)}", "assistant", closed=False)
        self.conv.add(item)
        sampling = RowSampling(text or SamplingParams(), audio or SamplingParams(), self.generator)
        cfg = self.model.cfg
        gen = (Generation.interleaved_turn(max_new_tokens, cfg.interleaved_n_text, cfg.interleaved_n_audio)
               if interleaved else Generation.sequential_turn(max_new_tokens))
        h = self._prefill_pending()
        while True:
            want = gen.want()
            value = sample_items(self.model, h[None], [want], [sampling], self.compiled)[0]
            step = gen.accept_text(value) if want == Modality.TEXT else gen.accept_audio(value)
            if step.emit:
                yield value
            if step.feed:
                item.append_generated(want, value)
            if gen.done:
                break
            h = self._feed(want, value)
        # An item accepted last (length limit) is in the content but not in the state yet: the next
        # prefill feeds it, then the closing "<|im_end|>\n".
        item.closed = True
        self.finish = gen.finish

    def _prefill_pending(self) -> Tensor:
        if self.conv.stale:
            self.state.reset_rows([self.row])
            self.conv.reset()
        x = embed_segments(self.model, self.conv.pending())
        h = prefill(self.model, self.state, self.row, self.conv.position, x)
        self.conv.held(x.shape[0])
        return h

    def _feed(self, kind: Modality, value: int | tuple[int, ...]) -> Tensor:
        x = embed_segments(self.model, [_item_segment(kind, value)])
        if self.compiled is None:
            h = prefill(self.model, self.state, self.row, self.conv.position, x)
        else:
            rows = self.state.rows
            x_all = x.new_zeros(rows, x.shape[-1])
            x_all[self.row] = x[0]
            positions = torch.zeros(rows, dtype=torch.long)
            positions[self.row] = self.conv.position
            active = torch.arange(rows) == self.row  # a graph takes device tensors only:
            h = self.compiled.backbone_step(x_all, positions.to(x.device), active.to(x.device))[self.row]
        self.conv.held(1)
        return h

    def rebuild(self) -> None:
        """Forget the row's state: the next turn prefills the whole history again (the reference way)."""
        self.conv.stale = True


def _item_segment(kind: Modality, value: int | tuple[int, ...]) -> Segment:
    if kind == Modality.TEXT:
        return Segment(Modality.TEXT, [int(value)])
    return Segment(Modality.AUDIO_OUT, torch.tensor([value], dtype=torch.long))

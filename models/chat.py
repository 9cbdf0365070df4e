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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from models.decode import RowSampling, prefill, sample_items
from models.generation import Finish, Generation, Modality
from models.lfm2 import BackboneState
from models.lfm2_audio import LFM2AudioModel
from models.mel import log_mel
from models.sampling import SamplingParams
from models.tokenizer import TextTokenizer

if TYPE_CHECKING:
    from models.compiled import CompiledSteps

__all__ = ["ASR_PROMPT", "CHAT_PROMPT", "TTS_VOICES", "Chat", "Segment"]

CHAT_PROMPT = "Respond with interleaved text and audio."
ASR_PROMPT = "Perform ASR."
TTS_VOICES = {
    "us_male": "Perform TTS. Use the US male voice.",
    "us_female": "Perform TTS. Use the US female voice.",
    "uk_male": "Perform TTS. Use the UK male voice.",
    "uk_female": "Perform TTS. Use the UK female voice.",
}


@dataclass
class Segment:
    """One run of positions: text ids, audio-in embeddings [n, hidden], or audio-out frames [n, 8]."""

    kind: Modality
    data: list[int] | Tensor

    def __len__(self) -> int:
        return len(self.data) if isinstance(self.data, list) else self.data.shape[0]


@dataclass
class Chat:
    model: LFM2AudioModel
    tokenizer: TextTokenizer
    state: BackboneState
    row: int = 0
    seed: int | None = None
    compiled: CompiledSteps | None = None  # models/compiled.py: static-shape steps over all state rows
    history: list[Segment] = field(default_factory=list)
    prefilled: int = 0  # segments of history already in the row's state
    position: int = 0  # positions in the row's state

    def __post_init__(self) -> None:
        self.generator = torch.Generator(device=self.model.device)
        if self.seed is not None:
            self.generator.manual_seed(self.seed)
        self.restart()

    def restart(self) -> None:
        """An empty conversation on the same row (the row's state is reset)."""
        self.history = [Segment(Modality.TEXT, self.tokenizer.start())]
        self.rebuild()

    # ---- building the conversation (lfm2-audio-model.md 4.1)
    def add_text(self, text: str) -> None:
        self.history.append(Segment(Modality.TEXT, self.tokenizer.encode(text)))

    def add_audio(self, wave_16k: Tensor) -> None:
        mel = log_mel(wave_16k.float(), self.model.cfg.preprocessor)
        with torch.inference_mode():
            emb = self.model.encode_audio([mel])[0]
        self.history.append(Segment(Modality.AUDIO_IN, emb))

    def turn(self, role: str, *, text: str | None = None, audio: Tensor | None = None) -> None:
        self.add_text(f"<|im_start|>{role}\n")
        if audio is not None:
            self.add_audio(audio)
        if text is not None:
            self.add_text(text)
        self.add_text("<|im_end|>\n")

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
        as the reference's generate_interleaved / generate_sequential do."""
        self.add_text("<|im_start|>assistant\n")
        sampling = RowSampling(text or SamplingParams(), audio or SamplingParams(), self.generator)
        cfg = self.model.cfg
        gen = (Generation.interleaved_turn(max_new_tokens, cfg.interleaved_n_text, cfg.interleaved_n_audio)
               if interleaved else Generation.sequential_turn(max_new_tokens))
        h = self._prefill_new()
        while True:
            want = gen.want()
            item = sample_items(self.model, h[None], [want], [sampling], self.compiled)[0]
            step = gen.accept_text(item) if want == Modality.TEXT else gen.accept_audio(item)
            if step.emit:
                yield item
            if gen.done:
                break
            h = self._feed(want, item)
        self.finish = gen.finish
        if gen.finish != Finish.STOP and gen.items:
            # The last item was yielded but not fed back yet; the turn's close feeds it.
            # It stays in the history unprefilled, before the closing "<|im_end|>\n".
            kind, item = gen.items[-1]
            self.history.append(self._item_segment(kind, item))
        self.add_text("<|im_end|>\n")

    def _feed(self, kind: Modality, item: int | tuple[int, ...]) -> Tensor:
        seg = self._item_segment(kind, item)
        self.history.append(seg)
        self.prefilled = len(self.history)
        x = self._embed(seg)
        if self.compiled is None:
            h = prefill(self.model, self.state, self.row, self.position, x)
        else:
            rows = self.state.rows
            x_all = x.new_zeros(rows, x.shape[-1])
            x_all[self.row] = x[0]
            positions = torch.zeros(rows, dtype=torch.long)
            positions[self.row] = self.position
            active = torch.arange(rows) == self.row
            h = self.compiled.backbone_step(x_all.to(self.model.dtype), positions, active)[self.row]
        self.position += 1
        return h

    def _item_segment(self, kind: Modality, item: int | tuple[int, ...]) -> Segment:
        if kind == Modality.TEXT:
            return Segment(Modality.TEXT, [int(item)])
        return Segment(Modality.AUDIO_OUT, torch.tensor([item], dtype=torch.long))

    def _prefill_new(self) -> Tensor:
        new = self.history[self.prefilled:]
        x = torch.cat([self._embed(s) for s in new])
        h = prefill(self.model, self.state, self.row, self.position, x)
        self.position += x.shape[0]
        self.prefilled = len(self.history)
        return h

    def _embed(self, seg: Segment) -> Tensor:
        with torch.inference_mode():
            if seg.kind == Modality.TEXT:
                return self.model.embed_text(torch.tensor(seg.data, device=self.model.device))
            if seg.kind == Modality.AUDIO_OUT:
                return self.model.embed_frames(seg.data.to(self.model.device))
            return seg.data.to(self.model.dtype)

    def rebuild(self) -> None:
        """Forget the row's state and prefill the whole history again on the next turn."""
        self.state.reset_rows([self.row])
        self.prefilled = 0
        self.position = 0

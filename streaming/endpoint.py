"""semantic_vad: the end of a turn judged by an end-of-turn model, smart-turn v3.2 (Daily, BSD-2-Clause), on top of
the webrtcvad TurnDetector. The model file ships inside the pipecat-ai wheel; it is located through the package
metadata (pipecat itself is never imported) and run with onnxruntime. Nothing is downloaded. See docs/api.md.

The model hears up to the last 8 s of the turn, 16 kHz mono, as Whisper's log-mel features (computed here in numpy),
zeros in front when shorter, and answers the probability that the turn is complete."""

from __future__ import annotations

import importlib.metadata
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from models.defaults import INPUT_RATE
from streaming.vad import (
    FRAME_MS,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
    TurnDetector,
    TurnEvent,
    VadConfig,
)

__all__ = [
    "EAGERNESS", "PROBES_MS", "PROBE_MS", "EndOfTurn", "Judgement", "Policy", "SemanticTurnDetector", "fit_window",
    "log_mel", "model_path", "shared_model",
]

log = logging.getLogger(__name__)

MODEL_PACKAGE = "pipecat-ai"
MODEL_FILE = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"  # inside the package, as installed
WINDOW = 8 * INPUT_RATE  # what the model hears: the last 8 s

# Whisper's front end at 16 kHz: 25 ms windows every 10 ms, 80 Slaney mel bands, 800 frames for 8 s.
N_FFT = 400
HOP = 160
N_MELS = 80
N_FRAMES = WINDOW // HOP

# The silences at which the model is asked. First 200 ms: what pipecat pairs smart-turn with (VAD stop_secs 0.2)
# and the 150-200 ms; the model has learned turns that end in such a pause. Once more at 600 ms when it
# said incomplete: P(complete) grows with the pause, so a complete turn it missed still ends near server_vad's
# 500 ms instead of waiting out the max (docs/bench/turn.md).
PROBES_MS = (200, 600)
PROBE_MS = PROBES_MS[0]


@dataclass(frozen=True)
class Policy:
    """threshold: the probability of "complete" at or above which the turn ends at the probe; max_wait_ms: the
    longest silence a turn the model calls incomplete is given (OpenAI's documented max timeouts)."""

    threshold: float
    max_wait_ms: int

    def wait_ms(self, probability: float, silence_ms: int = PROBE_MS) -> int:
        """Silence after the speech before the turn ends, judged at silence_ms: that when complete, else more the
        surer the model is that it is not, up to max_wait_ms."""
        if probability >= self.threshold:
            return silence_ms
        graded = PROBE_MS + (self.max_wait_ms - PROBE_MS) * (1 - probability / self.threshold)
        return max(silence_ms, round(graded))


# low lets the user take their time, high ends turns as soon as it can; auto is medium (OpenAI's semantic_vad).
EAGERNESS = {
    "low": Policy(threshold=0.7, max_wait_ms=8000),
    "medium": Policy(threshold=0.5, max_wait_ms=4000),
    "high": Policy(threshold=0.3, max_wait_ms=2000),
}
EAGERNESS["auto"] = EAGERNESS["medium"]


# ---- features


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear (3 mel per 200 Hz) below 1 kHz, logarithmic (27 mel per factor 6.4) above."""
    hz = np.asarray(hz, np.float64)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) * 27.0 / np.log(6.4)
    return np.where(hz < 1000.0, hz * 3.0 / 200.0, log_part)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    return np.where(mel < 15.0, mel * 200.0 / 3.0, 1000.0 * np.exp((mel - 15.0) * np.log(6.4) / 27.0))


def _mel_filters() -> np.ndarray:
    """(N_MELS, N_FFT // 2 + 1) triangles evenly spaced in mel from 0 Hz to Nyquist, each scaled to unit area
    (Slaney normalisation), as Whisper's."""
    edges = _mel_to_hz(np.linspace(0.0, _hz_to_mel(INPUT_RATE / 2), N_MELS + 2))
    bins = np.linspace(0.0, INPUT_RATE / 2, N_FFT // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return triangles * (2.0 / (upper - lower))


_FILTERS = _mel_filters()
_HANN = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic, as torch.hann_window


def fit_window(audio: np.ndarray) -> np.ndarray:
    """The last 8 s of 16 kHz audio, zeros in front when there is less (the audio ends where the window ends)."""
    x = np.asarray(audio, np.float32).reshape(-1)[-WINDOW:]
    return np.concatenate([np.zeros(WINDOW - x.size, np.float32), x]) if x.size < WINDOW else x


def log_mel(audio: np.ndarray) -> np.ndarray:
    """(80, 800) float32 Whisper log-mel features of 8 s of 16 kHz audio (fit_window first), the waveform
    normalised to zero mean and unit variance, as smart-turn was trained (WhisperFeatureExtractor, chunk_length=8,
    do_normalize=True)."""
    x = np.asarray(audio, np.float32).reshape(-1)
    if x.size != WINDOW:
        raise ValueError(f"log_mel takes {WINDOW} samples (8 s at 16 kHz), got {x.size}")
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")  # centred frames
    starts = np.arange(N_FRAMES + 1) * HOP
    frames = padded[starts[:, None] + np.arange(N_FFT)] * _HANN
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (801, 201)
    mel = np.log10(np.maximum(power[:-1] @ _FILTERS.T, 1e-10)).T  # the last frame is dropped, as Whisper does
    mel = np.maximum(mel, mel.max() - 8.0)  # 80 dB of range below the loudest
    return ((mel + 4.0) / 4.0).astype(np.float32)


# ---- the model


def model_path() -> Path:
    """The smart-turn ONNX file inside the installed pipecat-ai distribution (its package is not imported)."""
    try:
        dist = importlib.metadata.distribution(MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"semantic_vad needs the {MODEL_PACKAGE} package, which ships its end-of-turn model "
                           f"(pip install lfm-audio's dependencies)") from None
    path = Path(str(dist.locate_file(MODEL_FILE)))
    if not path.is_file():
        raise RuntimeError(f"{MODEL_PACKAGE} {dist.version} does not hold {MODEL_FILE}; lfm-audio expects the "
                           "version its pyproject.toml names")
    return path


class EndOfTurn:
    """smart-turn v3.2 in onnxruntime. One per process is enough (shared_model()): onnxruntime's run() may be called
    from several threads at once, and the features are pure numpy."""

    def __init__(self, path: Path | None = None, threads: int = 1):
        import onnxruntime as ort  # here, not at import: only semantic_vad sessions need it

        self.path = path or model_path()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # one call is small; sessions run side by side instead
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(self.path), sess_options=options,
                                             providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def probability(self, audio: np.ndarray) -> float:
        """P(the turn is complete) for 16 kHz mono float audio that ends now (its last 8 s are heard)."""
        features = log_mel(fit_window(audio))[None]
        (out,) = self._session.run(None, {self._input: features})
        return float(np.asarray(out).reshape(-1)[0])  # the graph ends in a sigmoid


_shared: EndOfTurn | None = None
_shared_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
INFERENCE_THREADS = 2  # background judgements of all sessions: each is one short CPU call


def shared_model() -> EndOfTurn:
    """The process's EndOfTurn, loaded on first use (a few hundred ms)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = EndOfTurn()
        return _shared


def _background() -> ThreadPoolExecutor:
    global _executor
    with _shared_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(INFERENCE_THREADS, thread_name_prefix="end-of-turn")
        return _executor


# ---- the detector


@dataclass(frozen=True)
class Judgement:
    """One question to the model: at speech_end_ms + silence_ms, answered after inference_ms."""

    speech_end_ms: int
    silence_ms: int
    probability: float
    inference_ms: float
    wait_ms: int  # the silence it gave the turn


class SemanticTurnDetector:
    """A TurnDetector whose turns end when the end-of-turn model says so. The inner webrtcvad detector stops after
    PROBE_MS of silence; the model then hears the turn so far (from its start less prefix_padding_ms). Complete:
    SpeechStopped right away. Incomplete: the turn stays open for a silence of Policy.wait_ms (up to the
    eagerness's max wait), after one more question at PROBES_MS[1]; speech before that continues the same turn,
    and its next pause asks again.

    Same interface and events as TurnDetector (push, set_config, reset, now_ms, clip_bounds, speaking). Times are
    on the audio timeline. With background=True the model runs on a worker thread and its answer is taken at the
    first push after it is ready, or at poll() (the caller's event loop is not held; `on_answer`, called from the
    worker, tells the caller an answer is waiting, for a client that sent its audio in one burst and then waits);
    without, push() runs it inline (deterministic: tests, offline evaluation)."""

    def __init__(self, config: VadConfig | None = None, eagerness: str = "auto", model: EndOfTurn | None = None,
                 background: bool = False, min_speech_ms: int = 90, probes_ms: tuple[int, ...] = PROBES_MS,
                 pause_ms: int | None = None):
        if not probes_ms or list(probes_ms) != sorted(probes_ms) or probes_ms[0] <= 0:
            raise ValueError(f"probes_ms must be increasing silences in ms, got {probes_ms}")
        self.probes_ms = tuple(probes_ms)
        self.config = config or VadConfig()
        self.eagerness = eagerness
        self.background = background
        self.on_answer: Callable[[], None] | None = None  # background: called on the worker thread when ready
        self._model = model
        # pause_ms: SpeechPaused when the silence has lasted that long (at most the first probe's), and
        # SpeechResumed when speech comes back before the turn ends, as TurnDetector's.
        self._vad = TurnDetector(self._probe_config(self.config), min_speech_ms, pause_ms)
        self.judgements: list[Judgement] = []  # of the current turn; kept until the next turn starts
        self.reset()

    @property
    def eagerness(self) -> str:
        return self._eagerness

    @eagerness.setter
    def eagerness(self, value: str) -> None:
        if value not in EAGERNESS:
            raise ValueError(f"eagerness must be one of {', '.join(EAGERNESS)}, got {value!r}")
        self._eagerness = value

    @property
    def policy(self) -> Policy:
        return EAGERNESS[self._eagerness]

    def _probe_config(self, config: VadConfig) -> VadConfig:
        return replace(config, silence_duration_ms=self.probes_ms[0])

    def set_config(self, config: VadConfig) -> None:
        """threshold and prefix_padding_ms apply; silence_duration_ms is the eagerness's business here."""
        self.config = config
        self._vad.set_config(self._probe_config(config))

    def reset(self) -> None:
        self._vad.reset()
        self._rest = np.zeros(0, np.float32)
        self._audio = np.zeros(0, np.float32)  # the latest judged audio, up to _keep samples
        self._audio_end = 0  # sample index (on the timeline) just after _audio
        self._turn_start_ms: int | None = None
        self._speech_end_ms = 0
        self._asked = 0  # judgements asked for in the current turn; an answer to an older one is stale
        self._pending: tuple[int, int, Future] | None = None  # (question, probe, answer) in the background
        self._deadline_ms: int | None = None  # the turn ends at this point of silence unless speech resumes
        self._next_probe: int | None = None  # index into PROBES_MS of the question still to ask
        self.judgements = []
        self.speaking = False
        self._paused = False

    @property
    def now_ms(self) -> int:
        return self._vad.now_ms

    def clip_bounds(self, start_ms: int, end_ms: int) -> tuple[int, int]:
        return self._vad.clip_bounds(start_ms, end_ms)

    def push(self, x: np.ndarray) -> list[TurnEvent]:
        """16 kHz float audio in any chunk sizes; judged one 30 ms frame at a time."""
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if self._rest.size:
            x = np.concatenate([self._rest, x])
        step = INPUT_RATE * FRAME_MS // 1000
        n = x.size // step
        self._rest = x[n * step:].copy()
        self._remember(x[: n * step])
        events: list[TurnEvent] = []
        for i in range(n):
            for ev in self._vad.push(x[i * step:(i + 1) * step]):
                self._on_inner(ev, events)
            self._check(events)
        return events

    def poll(self) -> list[TurnEvent]:
        """Take a background answer that arrived since the last push (no new audio needed)."""
        events: list[TurnEvent] = []
        self._check(events)
        return events

    def _remember(self, x: np.ndarray) -> None:
        keep = WINDOW + self.config.prefix_padding_ms * INPUT_RATE // 1000 + x.size
        self._audio = np.concatenate([self._audio[-(keep - x.size):], x]) if x.size else self._audio
        self._audio_end += x.size

    def _turn_audio(self, now_ms: int) -> np.ndarray:
        """The turn from its start less prefix_padding_ms up to now_ms (what the model hears)."""
        start_ms = max(0, (self._turn_start_ms or 0) - self.config.prefix_padding_ms)
        a = self._audio.size - (self._audio_end - start_ms * INPUT_RATE // 1000)
        b = self._audio.size - (self._audio_end - now_ms * INPUT_RATE // 1000)
        return self._audio[max(0, a):max(0, b)]

    def _on_inner(self, ev: TurnEvent, events: list) -> None:
        if isinstance(ev, SpeechPaused | SpeechResumed):  # within the inner turn, the same turn here
            if self.speaking and isinstance(ev, SpeechPaused) != self._paused:
                self._paused = isinstance(ev, SpeechPaused)
                events.append(ev)
            return
        if isinstance(ev, SpeechStarted):
            self._asked += 1  # whatever was being judged is out of date: the user goes on
            self._pending = self._deadline_ms = self._next_probe = None
            if not self.speaking:
                self.speaking = True
                self._turn_start_ms = ev.audio_start_ms
                self.judgements = []
                events.append(ev)
            elif self._paused:  # speech again in a pause of this turn
                self._paused = False
                events.append(SpeechResumed(ev.audio_start_ms))
        elif self.speaking:  # probes_ms[0] of silence
            self._speech_end_ms = ev.speech_end_ms if ev.speech_end_ms is not None else ev.audio_end_ms
            self._ask(0)

    def _ask(self, probe: int) -> None:
        """The model hears the turn so far."""
        self._asked += 1
        self._next_probe = None
        audio = self._turn_audio(self.now_ms)
        if self.background:  # the worker also loads the model the first time
            future = _background().submit(_timed, self._model, audio)
            self._pending = (self._asked, probe, future)
            if self.on_answer is not None:
                future.add_done_callback(lambda _: self.on_answer())
        else:
            self._decide(probe, *_timed_or_none(self._model, audio))

    def _check(self, events: list) -> None:
        if self._pending is not None and self._pending[2].done():
            question, probe, future = self._pending
            self._pending = None
            if question == self._asked:
                try:
                    answer = future.result()
                except Exception:
                    log.exception("end-of-turn model failed; the turn ends after silence_duration_ms")
                    answer = (None, 0.0)
                self._decide(probe, *answer)
        silence = self.now_ms - self._speech_end_ms
        if self._next_probe is not None and self._pending is None and silence >= self.probes_ms[self._next_probe]:
            self._ask(self._next_probe)
        if self._deadline_ms is not None and self.now_ms >= self._deadline_ms:
            self.speaking = self._paused = False
            self._deadline_ms = self._next_probe = None
            events.append(SpeechStopped(self.now_ms, self._speech_end_ms))

    def _decide(self, probe: int, probability: float | None, inference_ms: float) -> None:
        silence = self.probes_ms[probe]
        if probability is None:  # no answer: plain server_vad
            wait = max(silence, self.config.silence_duration_ms)
        else:
            wait = self.policy.wait_ms(probability, silence)
        self.judgements.append(Judgement(self._speech_end_ms, silence,
                                         float("nan") if probability is None else probability, inference_ms, wait))
        self._deadline_ms = self._speech_end_ms + wait
        if wait > silence and probe + 1 < len(self.probes_ms):
            self._next_probe = probe + 1


def _timed(model: EndOfTurn | None, audio: np.ndarray) -> tuple[float, float]:
    model = model or shared_model()
    t = time.perf_counter()
    p = model.probability(audio)
    return p, 1000 * (time.perf_counter() - t)


def _timed_or_none(model: EndOfTurn | None, audio: np.ndarray) -> tuple[float | None, float]:
    try:
        return _timed(model, audio)
    except Exception:
        log.exception("end-of-turn model failed; the turn ends after silence_duration_ms")
        return None, 0.0

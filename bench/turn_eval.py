"""`python -m bench.turn_eval`: how semantic_vad ends turns on espeak-ng speech (docs/bench/turn.md).

Each utterance, complete or cut off mid-sentence, is spoken by several espeak-ng voices at several speeds, put
after 700 ms and before 9 s of quiet room noise, and fed to a SemanticTurnDetector per eagerness (the model inline,
so the timeline is deterministic; its compute time is measured apart) and to the server_vad TurnDetector.

Right: a complete utterance ends within ON_TIME_MS after its speech; a cut one is held open for HOLD_MS or more
(twice server_vad's silence: time to go on).
Early: a turn ended before the utterance did (the user was cut off at an inner pause). Latency: end of speech to
SpeechStopped on the audio timeline (the model's compute comes on top: the `model ms` column)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.defaults import INPUT_RATE
from streaming.audio import read_wav, resample
from streaming.endpoint import EAGERNESS, PROBE_MS, PROBES_MS, SemanticTurnDetector, shared_model
from streaming.vad import SpeechStopped, TurnDetector, VadConfig

COMPLETE = [
    "What time is it?", "Thank you very much.", "I'd like to order a large pizza.",
    "Can you tell me about the weather today?", "Please turn off the lights.", "Where is the nearest train station?",
    "I think that's all for now.", "How are you doing today?", "Book me a table for two at eight.",
    "That sounds great, thanks.", "What is the capital of France?", "Set an alarm for seven tomorrow morning.",
    "My name is John and I live in Boston.", "Could you repeat that, please?", "I need a flight to Paris on Friday.",
    "Play some jazz music.", "How much does it cost?", "Remind me to call my mother tonight.",
    "No, that's not what I meant.", "Tell me a joke.", "What's the best way to get downtown?",
    "I was wondering if you could help me with my homework.", "Yes, please.", "Send the report to my boss.",
]
INCOMPLETE = [
    "I'd like to order a", "Can you tell me about the", "So I was thinking that", "My name is John and I",
    "What is the", "I need to book a flight to", "Could you please turn on the", "The best way to get there is",
    "I was wondering if you could", "Please remind me to call my", "How much does the", "Set an alarm for",
    "I want to know if", "Tell me more about", "It would be great if we could", "When I got home I",
    "I'd like to, um,", "Can you, uh,", "So the thing is, um,", "Well, I think that, uh,",
    "And then we went to the", "Because I really need", "Is there any way to", "What I'm trying to say is",
]
VOICES = [("en-us", 150), ("en-us", 190), ("en-gb", 160), ("en-gb", 200), ("en-gb-x-rp", 170), ("en-029", 170)]
LEAD_MS = 700
TAIL_MS = 9000  # beyond low eagerness's 8 s max wait
NOISE = 0.003  # about -50 dBFS of white noise: a quiet room through a cheap microphone
ON_TIME_MS = PROBE_MS + 100  # the probe, plus webrtcvad's frame and hangover slack
HOLD_MS = 2 * VadConfig().silence_duration_ms


def render(text: str, voice: str, speed: int, folder: Path) -> np.ndarray:
    path = folder / "say.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True,
                   capture_output=True)
    x, rate = read_wav(path)
    x = resample(x, rate, INPUT_RATE)
    voiced = np.flatnonzero(np.abs(x) > 0.01)
    return x[voiced[0]:voiced[-1] + 1]


def scene(speech: np.ndarray, seed: int) -> np.ndarray:
    x = np.concatenate([np.zeros(LEAD_MS * INPUT_RATE // 1000, np.float32), speech,
                        np.zeros(TAIL_MS * INPUT_RATE // 1000, np.float32)])
    return x + (NOISE * np.random.default_rng(seed).standard_normal(x.size)).astype(np.float32)


class Memo:
    """The shared model, each distinct input judged once (every eagerness asks about the same audio)."""

    def __init__(self):
        self.model = shared_model()
        self.answers: dict[bytes, float] = {}
        self.seconds: list[float] = []

    def probability(self, audio: np.ndarray) -> float:
        key = audio.tobytes()
        if key not in self.answers:
            t = time.perf_counter()
            self.answers[key] = self.model.probability(audio)
            self.seconds.append(time.perf_counter() - t)
        return self.answers[key]


@dataclass
class Outcome:
    complete: bool
    latency_ms: int | None  # end of speech to the turn's end; None: it never ended
    early: bool
    probability: float | None


def judge(detector, x: np.ndarray, speech_end_ms: int, complete: bool) -> Outcome:
    stops = []
    for i in range(0, x.size, INPUT_RATE * 20 // 1000):  # 20 ms pushes, as a WebRTC client sends
        stops += [e for e in detector.push(x[i:i + INPUT_RATE * 20 // 1000]) if isinstance(e, SpeechStopped)]
    early = any(s.audio_end_ms < speech_end_ms for s in stops)
    last = [s for s in stops if s.audio_end_ms >= speech_end_ms]
    judgements = getattr(detector, "judgements", [])
    return Outcome(complete, last[0].audio_end_ms - speech_end_ms if last else None, early,
                   judgements[-1].probability if judgements else None)


def right(o: Outcome) -> bool:
    if o.early or o.latency_ms is None:
        return False
    return o.latency_ms <= ON_TIME_MS if o.complete else o.latency_ms >= HOLD_MS


def summary(name: str, outcomes: list[Outcome]) -> str:
    cells = [name]
    for complete in (True, False):
        group = [o for o in outcomes if o.complete == complete]
        lat = [o.latency_ms for o in group if o.latency_ms is not None]
        cells += [f"{sum(map(right, group))}/{len(group)} ({100 * sum(map(right, group)) / len(group):.0f}%)",
                  f"{sum(o.early for o in group)}",
                  f"{np.median(lat):.0f} / {np.percentile(lat, 90):.0f}" if lat else "-"]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.turn_eval", description=__doc__.splitlines()[0])
    p.add_argument("--voices", type=int, default=len(VOICES), help=f"how many of the {len(VOICES)} voice/speeds")
    p.add_argument("--utterances", type=int, default=len(COMPLETE), help="of each kind (complete, cut)")
    p.add_argument("--eagerness", default="high,medium,low")
    p.add_argument("--probes", default=",".join(map(str, PROBES_MS)), help="silences (ms) at which the model is asked")
    p.add_argument("--probabilities", action="store_true", help="also list each clip's P(complete)")
    args = p.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is not installed (apt-get install espeak-ng)")
    memo = Memo()
    clips = []  # (text, voice, speed, complete, scene, speech end ms)
    with tempfile.TemporaryDirectory() as tmp:
        for complete, texts in ((True, COMPLETE), (False, INCOMPLETE)):
            for text in texts[:args.utterances]:
                for voice, speed in VOICES[:args.voices]:
                    speech = render(text, voice, speed, Path(tmp))
                    end = LEAD_MS + 1000 * speech.size // INPUT_RATE
                    clips.append((text, voice, speed, complete, scene(speech, len(clips)), end))
    print(f"{sum(c[3] for c in clips)} complete and {sum(not c[3] for c in clips)} cut clips, "
          f"{len(VOICES[:args.voices])} voice/speeds; right = complete ended within {ON_TIME_MS} ms / cut held "
          f"{HOLD_MS} ms or more\n")
    print("| detector | complete right | early | latency ms median / p90 | cut right | early | "
          "latency ms median / p90 |")
    print("|---|---|---|---|---|---|---|")
    baseline = VadConfig()
    print(summary(f"server_vad {baseline.silence_duration_ms} ms",
                  [judge(TurnDetector(baseline), x, end, c) for *_, c, x, end in clips]), flush=True)
    probes = tuple(int(v) for v in args.probes.split(","))
    per_clip = {}
    for eagerness in args.eagerness.split(","):
        outcomes = [judge(SemanticTurnDetector(eagerness=eagerness, model=memo, probes_ms=probes), x, end, c)
                    for *_, c, x, end in clips]
        per_clip[eagerness] = outcomes
        policy = EAGERNESS[eagerness]
        name = f"semantic_vad {eagerness} (≥ {policy.threshold:g}, max {policy.max_wait_ms} ms, asked at {args.probes})"
        print(summary(name, outcomes), flush=True)
    ms = 1000 * np.array(memo.seconds)
    print(f"\nmodel ms per judgement (features + onnxruntime, 1 thread): median {np.median(ms):.1f}, "
          f"p90 {np.percentile(ms, 90):.1f}, n={ms.size}")
    if args.probabilities:
        first = per_clip[next(iter(per_clip))]
        for (text, voice, speed, complete, *_), o in zip(clips, first, strict=True):
            p_text = "-" if o.probability is None else f"{o.probability:.2f}"
            print(f"{'complete' if complete else 'cut':8} {voice:10} {speed} {p_text:>5} {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

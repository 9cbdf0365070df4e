"""The `lfm-audio` command: serve, make-checkpoint, generate (the benchmarks: `python -m bench`)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from models.defaults import WEIGHTS

__all__ = ["main"]


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint directory or Hub id (default: the embedded tiny random checkpoint)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--weights", choices=WEIGHTS, default=WEIGHTS[0],
                   help="decode-path linear weights: dense, or int8/int4 packed (CPU, bfloat16)")


def cmd_make_checkpoint(args: argparse.Namespace) -> int:
    from models.random_checkpoint import write_random_checkpoint

    out = write_random_checkpoint(args.dir, args.size, seed=args.seed, detokenizer=args.detokenizer,
                                  progress=args.size == "full")
    print(f"wrote a {args.size} random checkpoint (seed {args.seed}) to {out}")
    return 0


def load(args: argparse.Namespace):
    import torch

    from models.checkpoint import load_checkpoint
    from models.random_checkpoint import embedded_default

    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model or embedded_default()
    dtype = getattr(torch, args.dtype) if args.dtype else None
    ckpt = load_checkpoint(model, device=args.device, dtype=dtype, weights=args.weights)
    if ckpt.random:
        print(f"note: {ckpt.directory} holds random weights ({ckpt.random.get('size')}): the speech is noise. "
              "Pass --model with a real LFM2-Audio checkpoint directory or Hub id.", file=sys.stderr)
    return ckpt


def cmd_generate(args: argparse.Namespace) -> int:
    import numpy as np

    from models.defaults import INPUT_RATE, OUTPUT_RATE
    from models.sampling import SamplingParams
    from streaming.audio import read_wav, resample, write_wav
    from streaming.offline import default_sampling, open_chat, run_turn

    # Each turn's user input: a WAV file (--audio) or text (--text); TTS takes text, ASR audio.
    inputs = [("audio", a) for a in args.audio or []] + [("text", t) for t in args.text or []]
    needs = {"tts": "text", "asr": "audio"}.get(args.mode)
    if not inputs or (needs and any(kind != needs for kind, _ in inputs)):
        print(f"--mode {args.mode} needs {'--' + needs if needs else '--audio or --text'}", file=sys.stderr)
        return 2
    ckpt = load(args)
    chat = open_chat(ckpt, args.mode, voice=args.voice, seed=args.seed, decoder=args.decoder)
    text_default, audio_default = default_sampling(args.mode)
    sampling = (
        SamplingParams(args.text_temperature if args.text_temperature is not None else text_default.temperature,
                       args.text_top_k if args.text_top_k is not None else text_default.top_k),
        SamplingParams(args.audio_temperature if args.audio_temperature is not None else audio_default.temperature,
                       args.audio_top_k if args.audio_top_k is not None else audio_default.top_k),
    )
    speech_out = []
    for turn in range(args.turns or len(inputs)):
        kind, source = inputs[turn % len(inputs)]
        audio = text = None
        if kind == "text":
            text = source
        else:
            wave, rate = read_wav(source)
            audio = resample(wave, rate, INPUT_RATE)
        result = run_turn(chat, args.mode, audio_16k=audio, text=text, max_new_tokens=args.max_new_tokens,
                          sampling=sampling)
        speech_out.append(result.audio)
        rtf = result.seconds / max(len(result.audio) / OUTPUT_RATE, 1e-9) if len(result.audio) else float("nan")
        print(f"[turn {turn + 1}] {result.text!r}")
        print(f"  {result.finish.value if result.finish else '?'}; {len(result.items)} items, {result.frames} "
              f"audio frames, {result.seconds:.2f} s, real-time factor {rtf:.2f}", file=sys.stderr)
    if args.out and args.mode != "asr":
        write_wav(args.out, np.concatenate(speech_out) if speech_out else np.zeros(0), OUTPUT_RATE)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from server import log_filters
    from server.app import create_app
    from server.drain import DrainingServer
    from server.settings import Settings

    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    settings = Settings(**overrides)
    logging.basicConfig(level=settings.log_level.upper() if settings.log_level != "trace" else "DEBUG",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    host = "[" + settings.host + "]" if ":" in settings.host else settings.host
    tls = "s" if settings.ssl_certfile else ""
    print(f"lfm-audio: loading, then serving the voice demo at http{tls}://{host}:{settings.port}/ "
          f"and the Realtime API at ws{tls}://{host}:{settings.port}/v1/realtime", file=sys.stderr, flush=True)
    # uvicorn.run, but with a server that drains on SIGTERM/SIGINT before uvicorn closes the WebSockets. The
    # graceful timeout is then for REST requests still running after the drain.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            ws_max_size=2 * settings.max_event_bytes,
                            timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 1,
                            ssl_certfile=settings.ssl_certfile, ssl_keyfile=settings.ssl_keyfile)
    log_filters.install()  # after uvicorn.Config: it configures uvicorn's loggers
    server = DrainingServer(config, app.state.lfm)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the SIGINT it stopped on
        server.run()
    return 0 if server.started else STARTUP_FAILURE


def _add_settings_args(p: argparse.ArgumentParser) -> None:
    """One flag per server setting (env LFM_AUDIO_<NAME> sets the same); unset flags leave env/defaults."""
    from server.settings import Settings

    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = field.annotation
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=field.description)
        elif kind in (int, float):
            p.add_argument(flag, type=kind, default=None, help=field.description)
        elif name in ("api_keys", "cors_origins", "ice_servers"):
            p.add_argument(flag, default=None, help=field.description)
        else:
            p.add_argument(flag, default=None, help=field.description)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lfm-audio", description="Real-time speech-to-speech for LFM2-Audio")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-checkpoint", help="write a seeded random checkpoint in the official layout")
    p.add_argument("dir", type=Path)
    p.add_argument("--size", choices=["tiny", "full"], default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--detokenizer", choices=["mimi", "lfm2.5", "both"], default="both")
    p.set_defaults(func=cmd_make_checkpoint)

    p = sub.add_parser("generate", help="run one or more turns and write the speech")
    _add_model_args(p)
    p.add_argument("--mode", choices=["chat", "asr", "tts"], default="chat")
    p.add_argument("--audio", action="append", help="user speech (WAV); repeat for several turns")
    p.add_argument("--text", action="append", help="user text; repeat for several turns")
    p.add_argument("--out", type=Path, default=Path("out.wav"))
    p.add_argument("--turns", type=int, help="number of turns (inputs are reused in order)")
    p.add_argument("--voice", choices=["us_male", "us_female", "uk_male", "uk_female"], default="us_female")
    p.add_argument("--decoder", choices=["auto", "mimi", "lfm2.5"], default="auto")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--audio-temperature", type=float, help="0 = greedy")
    p.add_argument("--audio-top-k", type=int)
    p.add_argument("--text-temperature", type=float)
    p.add_argument("--text-top-k", type=int)
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("serve", help="serve the Realtime API, the REST endpoints and the voice demo")
    _add_settings_args(p)
    p.set_defaults(func=cmd_serve)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""lfm-audio's benchmarks, run from the repository root as `python -m bench` (`make bench`).

Not part of the installed package: they measure it. Every measurement is a subprocess (ours with this
interpreter, the reference's in its own venv via bench/reference_bench.py), so that warm-up and peak
memory are per process. Modules, by role (imports run downwards only):

    __main__.py   the command line; picks the suites
    single.py     one session, ours (three variants) against the reference
    engine.py     the engine: batching sweep, time to first audio over a conversation
    report.py     markdown tables and the plot, from the measurements' JSON
    harness.py    subprocesses, checkpoints, the reference venv, worker flags
    clips.py      the synthetic user clips both sides hear
    reference_bench.py  the reference's side; standalone, runs in the reference venv
"""

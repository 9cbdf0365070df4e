import pytest

from streaming.audio import write_wav
from tests.clients.harness import make_cert


@pytest.fixture(scope="session")
def speech_wav(say, tmp_path_factory):
    """A short spoken sentence, 24 kHz: what every client streams as the user's speech."""
    path = tmp_path_factory.mktemp("speech") / "hello.wav"
    write_wav(path, say("Hello, what is the weather like today?", 24_000), 24_000)
    return str(path)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    return make_cert(tmp_path_factory.mktemp("tls"))

"""The byte-level tokenizer of random checkpoints and streaming text deltas."""

import random

from models.tokenizer import SPECIAL_TOKENS, TextStream, TextTokenizer, build_byte_tokenizer


def test_special_tokens_keep_lfm2_ids_and_text_round_trips():
    tok = TextTokenizer(build_byte_tokenizer(512))
    for i, name in SPECIAL_TOKENS.items():
        assert tok.encode(name) == [i]
    text = "Héllo wörld ✓ 你好"
    ids = tok.encode(f"<|im_start|>user\n{text}<|im_end|>\n")
    assert ids[0] == 6 and ids[-2] == 7
    assert tok.decode(ids) == f"user\n{text}\n"
    assert tok.decode([123]) == ""  # a reserved (special) token decodes to nothing
    assert tok.vocab_size == 512


def test_text_deltas_add_up_to_the_whole_decode_even_with_invalid_bytes():
    tok = TextTokenizer(build_byte_tokenizer(512))
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(256, 512) for _ in range(rng.randrange(1, 30))]
        stream = TextStream(tok)
        deltas = [stream.push(i) for i in ids]
        assert "".join(deltas) + stream.flush() == tok.decode(ids)
    stream = TextStream(tok)
    euro = tok.encode("€")  # three bytes, three tokens: nothing shows until the character is whole
    assert [stream.push(i) for i in euro] == ["", "", "€"]

"""The generation state machine reproduces the reference loops' control flow (lfm2-audio-model.md 4.4)."""

import torch

from models.config import EOA
from models.generation import Finish, Generation, Modality
from models.sampling import sample

FRAME = (5, 6, 7, 8, 9, 10, 11, 12)
EOA_FRAME = (EOA,) * 8


def _drive(gen: Generation, text_source, audio_source):
    """Run the machine with scripted model outputs; return the yielded pattern ('t'/'a'/'E'/'7')."""
    out = []
    while not gen.done:
        if gen.want() == Modality.TEXT:
            tok = next(text_source)
            step = gen.accept_text(tok)
            if step.emit:
                out.append("7" if tok == 7 else "T" if tok == 130 else "t")
        else:
            frame = next(audio_source)
            gen.accept_audio(frame)
            out.append("E" if frame[0] == EOA else "a")
    return "".join(out)


def test_interleaved_pattern_six_text_twelve_audio():
    text = iter([11] * 14 + [130] + [7])
    audio = iter([FRAME] * 39 + [EOA_FRAME])
    pattern = _drive(Generation.interleaved_turn(1000), text, audio)
    assert pattern == "t" * 6 + "a" * 12 + "t" * 6 + "a" * 12 + "ttT" + "a" * 15 + "E"


def test_interleaved_stop_token_is_not_yielded_or_counted_as_item():
    gen = Generation.interleaved_turn(100)
    pattern = _drive(gen, iter([11, 7]), iter([]))
    assert pattern == "t" and gen.finish == Finish.STOP
    assert gen.items == [(Modality.TEXT, 11)]


def test_interleaved_early_end_of_audio_keeps_the_leftover_counter():
    # EOA as the 5th frame: `left` is 12 - 5 = 7, so 7 text tokens follow before audio resumes.
    text = iter([11] * 6 + [11] * 7 + [11] * 6)
    audio = iter([FRAME] * 4 + [EOA_FRAME] + [FRAME] * 12)
    gen = Generation.interleaved_turn(6 + 5 + 7 + 12 + 1)
    assert _drive(gen, text, audio) == "t" * 6 + "aaaaE" + "t" * 7 + "a" * 12 + "t"
    assert gen.finish == Finish.LENGTH


def test_sequential_tts_and_asr():
    gen = Generation.sequential_turn(100)
    assert _drive(gen, iter([128, 7]), iter([FRAME, FRAME, EOA_FRAME])) == "taaE7"
    assert gen.finish == Finish.STOP
    gen = Generation.sequential_turn(100)
    assert _drive(gen, iter([40, 41, 42, 7]), iter([])) == "ttt7"


def test_max_new_tokens_counts_text_and_audio():
    gen = Generation.interleaved_turn(10)
    assert _drive(gen, iter([11] * 20), iter([FRAME] * 20)) == "t" * 6 + "a" * 4
    assert gen.finish == Finish.LENGTH and gen.steps == 10


def test_sampling_greedy_topk_and_per_row_generators():
    logits = torch.tensor([[0.0, 5.0, 4.9, -1.0], [3.0, 0.0, 0.0, 0.0]])
    greedy = sample(logits, torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), [None, None])
    assert greedy.tolist() == [1, 0]

    # top-k 2 never draws outside the two largest; ties at the threshold are kept
    draws = set()
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        draws.add(int(sample(logits[:1], torch.tensor([5.0]), torch.tensor([2]), [g])))
    assert draws == {1, 2}
    tie = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    drawn = {int(sample(tie, torch.tensor([1.0]), torch.tensor([1 + 1]), [g])) for _ in range(200)}
    assert drawn == {0, 1, 2}

    # a row's draws depend only on its own generator, not on its neighbours
    def row0(other_seed):
        gens = [torch.Generator().manual_seed(7), torch.Generator().manual_seed(other_seed)]
        flat = torch.zeros(2, 50)
        return [int(sample(flat, torch.tensor([1.0, 1.0]), torch.tensor([0, 0]), gens)[0]) for _ in range(20)]

    assert row0(1) == row0(2)


def test_sampling_distribution_matches_softmax():
    g = torch.Generator().manual_seed(3)
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    counts = torch.zeros(3)
    for _ in range(4000):
        counts[int(sample(logits, torch.tensor([1.0]), torch.tensor([0]), [g]))] += 1
    # Sampling noise, not rounding: a frequency's std over 4000 draws is <= 0.008, so 0.03 is ~4 sigma (seeded).
    torch.testing.assert_close(counts / 4000, logits.softmax(-1)[0], atol=0.03, rtol=0)


def test_partial_sort_bound_gives_the_same_samples_as_a_full_sort():
    from models.sampling import SamplingParams, kmax_bound, sample_with_noise

    g = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 2049, generator=g)
    noise = torch.empty(6, 2049).exponential_(generator=g)
    t = torch.tensor([1.0, 0.7, 1.3, 0.0, 1.0, 0.9])
    k = torch.tensor([4, 64, 3, 4, 1, 40])
    params = [SamplingParams(float(a), int(b)) for a, b in zip(t, k, strict=True)]
    bound = kmax_bound(params, 2049)
    assert bound == 64
    full = sample_with_noise(logits, t, k, noise)
    assert torch.equal(sample_with_noise(logits, t, k, noise, bound), full)
    assert kmax_bound([SamplingParams()], 2049) == 1
    assert kmax_bound([SamplingParams(1.0, 0)], 2049) == 2049
    assert kmax_bound([SamplingParams(1.0, 5)], 2049) == 8

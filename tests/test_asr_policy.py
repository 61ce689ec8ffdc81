"""The caption policy's pure rules: where long speech is cut, and which decoded text is kept."""

from __future__ import annotations

from inference.asr.policy import (
    Word,
    clean_hypothesis,
    cut_repetition,
    is_hallucination_phrase,
    join_words,
    quietest_cut,
)

WINDOW = 512


def words(text: str, start: float = 0.0, step: float = 0.5) -> list[Word]:
    return [Word(start + i * step, start + (i + 1) * step, w) for i, w in enumerate(text.split())]


def test_quietest_cut_falls_into_the_least_speech_like_window_of_the_later_half() -> None:
    probs = [(i * WINDOW, 0.95) for i in range(100)]
    probs[20] = (20 * WINDOW, 0.05)  # a breath early on: too early to cut there
    probs[70] = (70 * WINDOW, 0.30)  # a dip between words in the later half
    probs[85] = (85 * WINDOW, 0.20)  # the quietest point of the later half
    cut = quietest_cut(probs, 0, 100 * WINDOW)
    assert cut == 85 * WINDOW + WINDOW // 2
    # with no VAD figures for the span, cut at its end (nothing is dropped either way)
    assert quietest_cut([], 1000, 9000) == 9000
    # ties go to the later window, so the final before the cut is as long as allowed
    flat = [(i * WINDOW, 0.5) for i in range(10)]
    assert quietest_cut(flat, 0, 10 * WINDOW) == 9 * WINDOW + WINDOW // 2


def test_clean_hypothesis_drops_no_speech_phrases_and_cuts_loops() -> None:
    assert clean_hypothesis("Thanks for watching!") == ("", False)
    assert clean_hypothesis("Thank you.", doubtful=True) == ("", False)
    assert clean_hypothesis("Thank you.") == ("Thank you.", False)
    text, looped = clean_hypothesis("We will go " + "to the park " * 6)
    assert looped and text == "We will go to the park"
    assert clean_hypothesis("The weather is sunny and the river is calm.") == (
        "The weather is sunny and the river is calm.",
        False,
    )


def test_cut_repetition_keeps_the_first_occurrence() -> None:
    looped = words("I said " + "the end " * 6)
    cut, flagged = cut_repetition(looped)
    assert flagged
    assert join_words(cut) == "I said the end"
    normal = words("the end of the end of it")
    assert cut_repetition(normal) == (normal, False)


def test_hallucination_phrases() -> None:
    assert is_hallucination_phrase("Thanks for watching!")
    assert is_hallucination_phrase("Subtitles by the Amara.org community")
    assert is_hallucination_phrase("   ")
    assert not is_hallucination_phrase("Thanks for watching the kids yesterday.")
    # short phrases people do say are dropped only when the model doubts the segment
    assert not is_hallucination_phrase("Thank you.")
    assert is_hallucination_phrase("Thank you.", doubtful=True)


def test_a_phrase_said_twice_back_to_back_is_a_loop() -> None:
    text, looped = clean_hypothesis("We will meet at the library. We will meet at the library.")
    assert looped and text == "We will meet at the library."
    # short repeats are speech ("no no"), and so is a phrase that comes back later
    assert clean_hypothesis("It is very very good.") == ("It is very very good.", False)


def test_whisper_starting_the_utterance_over_is_cut() -> None:
    from inference.asr.decode import cut_restart

    assert cut_restart("We will meet at the library after lunch. We will meet at") == (
        "We will meet at the library after lunch."
    )
    assert cut_restart("The train to the city leaves.") == "The train to the city leaves."
    # a replay that does not start with the same words (seen in the captions bench)
    assert (
        cut_restart("The bridge will open to traffic next spring. The new bridge will open to traffic next spring.")
        == "The bridge will open to traffic next spring."
    )
    # two different sentences stay, even when they share words
    two = "Please send me the report. Please send the invoice to the office before noon."
    assert cut_restart(two) == two


def test_the_lead_read_again_is_dropped_and_new_words_stay() -> None:
    from inference.asr.decode import strip_lead_repeat

    lead = "We will meet at the library after lunch."
    assert strip_lead_repeat("We will meet at the library after lunch.", lead) == ""
    # a near repeat (one word misheard) followed by the utterance's own words
    assert strip_lead_repeat("We will meet in the library after lunch. Please send the report.", lead) == (
        "Please send the report."
    )
    # an utterance that only starts like the lead is its own speech
    own = "We will meet the new director tomorrow morning at nine."
    assert strip_lead_repeat(own, lead) == own
    # a lead too short to tell a repeat from speech is left alone
    assert strip_lead_repeat("Thanks. See you soon.", "Thanks.") == "Thanks. See you soon."

"""Commit policy for streaming captions (inference/asr/policy.py), with scripted hypotheses.

No model here: each test plays the role of Whisper by handing the policy the word lists it
would return for a growing buffer, then checks what became partial and what became final."""

from __future__ import annotations

import itertools

from inference.asr.policy import (
    CaptionAssembler,
    CaptionUpdate,
    LocalAgreement,
    Word,
    choose_trim_time,
    cut_repetition,
    is_hallucination_phrase,
    join_words,
)


def words(text: str, start: float = 0.0, step: float = 0.4) -> list[Word]:
    """Timed words: each `step` seconds long, back to back from `start`."""
    return [Word(start + i * step, start + (i + 1) * step, w) for i, w in enumerate(text.split())]


def test_local_agreement_commits_only_what_two_hypotheses_agree_on() -> None:
    la = LocalAgreement()
    la.insert(words("the cat sad"))
    assert la.flush() == []  # one hypothesis is never enough
    assert join_words(la.tail()) == "the cat sad"

    la.insert(words("the cat sat on"))
    assert join_words(la.flush()) == "the cat"  # "sad" vs "sat": disagreement stops the prefix
    assert join_words(la.tail()) == "sat on"
    assert la.last_committed_time == words("the cat")[-1].end

    la.insert(words("the cat sat on the mat."))
    assert join_words(la.flush()) == "sat on"
    assert join_words(la.tail()) == "the mat."


def test_local_agreement_ignores_case_and_punctuation_when_comparing() -> None:
    la = LocalAgreement()
    la.insert(words("Hello world"))
    la.flush()
    la.insert(words("hello, World. again"))
    committed = la.flush()
    # committed text comes from the newest hypothesis
    assert [w.text for w in committed] == ["hello,", "World."]


def test_local_agreement_drops_rewritten_committed_words() -> None:
    la = LocalAgreement()
    la.insert(words("one two three"))
    la.flush()
    la.insert(words("one two three four"))
    assert join_words(la.flush()) == "one two three"
    # Whisper re-transcribes committed words with earlier times: dropped by the time filter
    shifted = [Word(w.start - 0.05, w.end - 0.05, w.text) for w in words("one two three four five")]
    la.insert(shifted)
    assert [w.text for w in la.flush()] == ["four"]  # agreed with the previous tail, once
    assert join_words(la.tail()) == "five"
    # ... or with a start just after the last commit: dropped as an n-gram of the committed tail
    la.insert([Word(1.55, 1.9, "four"), Word(1.9, 2.3, "five"), Word(2.3, 2.7, "six")])
    assert [w.text for w in la.flush()] == ["five"]
    assert [w.text for w in la.committed_in_buffer] == ["one", "two", "three", "four", "five"]


def test_commit_all_uses_newest_hypothesis_or_falls_back_to_tail() -> None:
    la = LocalAgreement()
    la.insert(words("good morning every"))
    la.flush()
    # no new hypothesis (model busy): the tail is what we have
    assert join_words(la.commit_all()) == "good morning every"
    assert la.tail() == []

    la2 = LocalAgreement()
    la2.insert(words("good morning every"))
    la2.flush()
    la2.insert(words("good morning everyone."))  # the final pass over the whole utterance
    assert join_words(la2.commit_all()) == "good morning everyone."


def test_trim_forgets_committed_words_before_the_cut() -> None:
    la = LocalAgreement()
    for _ in range(2):
        la.insert(words("a b c d"))
        la.flush()
    assert len(la.committed_in_buffer) == 4
    la.trim(0.8)  # words end at 0.4, 0.8, 1.2, 1.6
    assert [w.text for w in la.committed_in_buffer] == ["c", "d"]


def scripted_stream(hypotheses: list[str]) -> tuple[list[CaptionUpdate], CaptionAssembler]:
    """Run growing hypotheses through LocalAgreement + CaptionAssembler; close at the end."""
    la = LocalAgreement()
    captions = CaptionAssembler(itertools.count(1).__next__)
    updates: list[CaptionUpdate] = []
    for hyp in hypotheses:
        la.insert(words(hyp))
        committed = la.flush()
        updates += captions.update(committed, la.tail())
    updates += captions.close(la.commit_all())
    return updates, captions


def test_partials_then_final_with_one_stable_id() -> None:
    updates, captions = scripted_stream(
        ["we will", "we will meat", "we will meet at the", "we will meet at the library"]
    )
    assert {u.id for u in updates} == {1}
    assert [u.final for u in updates][-1] is True
    assert all(not u.final for u in updates[:-1])
    assert updates[-1].text == "we will meet at the library"
    assert updates[1].text == "we will meat"  # the tail may change ...
    assert captions.retracted_chars >= len("meat") - len("me")  # ... and the flicker is counted


def test_finals_are_immutable_and_split_at_sentence_ends() -> None:
    hypotheses = [
        "hello there.",
        "hello there. how are",
        "hello there. how are you?",
        "hello there. how are you? fine thanks",
        "hello there. how are you? fine thanks.",
    ]
    updates, _ = scripted_stream(hypotheses)
    finals = [u for u in updates if u.final]
    assert [f.text for f in finals] == ["hello there.", "how are you?", "fine thanks."]
    # one final per id, and no update of any kind for an id after its final
    closed: set[int] = set()
    for u in updates:
        assert u.id not in closed, f"update after final for id {u.id}: {u}"
        if u.final:
            closed.add(u.id)
    # every final id was shown as a partial first
    partial_ids = {u.id for u in updates if not u.final}
    assert {f.id for f in finals} <= partial_ids
    assert len({f.id for f in finals}) == 3


def test_long_caption_without_punctuation_is_cut_by_word_count() -> None:
    captions = CaptionAssembler(itertools.count(1).__next__, max_words=5, max_seconds=100)
    out = captions.update(words("one two three four five six seven"), [])
    finals = [u for u in out if u.final]
    assert [f.text for f in finals] == ["one two three four five"]
    assert out[-1].text == "six seven" and not out[-1].final


def test_close_retracts_a_partial_that_the_final_pass_dropped() -> None:
    captions = CaptionAssembler(itertools.count(1).__next__)
    partial = captions.update([], words("thanks for"))
    assert partial and not partial[0].final
    closing = captions.close([])
    assert len(closing) == 1 and closing[0].final and closing[0].text == "" and closing[0].id == partial[0].id
    assert captions.close([]) == []  # nothing open any more


def test_identical_partials_are_not_repeated() -> None:
    captions = CaptionAssembler(itertools.count(1).__next__)
    assert len(captions.update([], words("same text"))) == 1
    assert captions.update([], words("same text")) == []


def test_choose_trim_time() -> None:
    # short buffer: never trim
    assert choose_trim_time(0.0, 10.0, [3.0, 6.0, 9.0], 8.0, 15.0) is None
    # long buffer: the latest committed segment end, not the last (open) segment
    assert choose_trim_time(0.0, 16.0, [4.0, 8.0, 12.0, 16.0], 13.0, 15.0) == 12.0
    assert choose_trim_time(0.0, 16.0, [4.0, 8.0, 12.0, 16.0], 9.0, 15.0) == 8.0
    # or the end of the last final caption (a sentence end), whichever is later
    assert choose_trim_time(0.0, 16.0, [16.0], 7.5, 15.0, final_time=6.0) == 6.0
    assert choose_trim_time(0.0, 16.0, [4.0, 16.0], 7.5, 15.0, final_time=3.0) == 4.0
    # never mid-sentence: committed words alone are no boundary
    assert choose_trim_time(0.0, 16.0, [16.0], 7.5, 15.0) is None
    assert choose_trim_time(5.0, 21.0, [21.0], 4.0, 15.0, final_time=4.0) is None


def test_close_with_replaces_only_what_the_final_pass_heard() -> None:
    captions = CaptionAssembler(itertools.count(1).__next__)
    captions.update(words("one two three"), words("for five", start=1.2))  # committed, not final
    # the final pass heard the audio from 0.8 s on: "one two" (before it) stay, the rest is redone
    hypothesis = words("three four five six", start=0.8)
    out = captions.close_with(hypothesis, audio_start=0.8)
    assert [u.text for u in out if u.final] == ["one two three four five six"]
    # a later final pass that hears the finished words again does not repeat them
    captions.update([], words("seven eight", start=2.4))
    out = captions.close_with(words("five six seven eight", start=1.6), audio_start=1.6)
    assert [u.text for u in out if u.final] == ["seven eight"]


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

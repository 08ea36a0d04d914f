"""check_candidate's verdicts, including the blacklist's quicker search of ASCII text, which must
find what the case-insensitive pattern finds."""

from __future__ import annotations

import pytest

from selfinstruct.filters import FilterConfig, check_candidate
from selfinstruct.records import Candidate

# (instruction, the first filter it fails)
CASES = [
    ("Describe the IMAGE shown below please", ("blacklisted_word", "image")),
    ("Collect images of cats please", ("blacklisted_word", "images")),  # the longer word first
    ("Profile the mapping process here now", None),  # "file" and "map" inside words only
    ("Plan a trip and go  to the museum", None),  # "go to" is one space apart
    ("Write a program that draws an image", ("blacklisted_word", "image")),
    ("Write a program to sort numbers", ("write_a_program", "starts with 'Write a program'")),
    ("!Write a poem about the sea", ("starts_with_punctuation", "'!'")),
    ("Draw", ("too_short", "1 words")),
    # Not ASCII: ignoring case matches "İ" and "ı" to "i", which lowering the text would not.
    ("Describe the İmage shown below please", ("blacklisted_word", "i\u0307mage")),
    ("Describe the ımage shown below please", ("blacklisted_word", "ımage")),
]


@pytest.mark.parametrize(("instruction", "expected"), CASES, ids=[c[0] for c in CASES])
def test_the_first_filter_failed_is_reported(instruction: str, expected: tuple[str, str] | None) -> None:
    candidate = Candidate(instruction, "", "An answer.")
    assert check_candidate(candidate) == expected
    # Skipping a filter that does not exist changes nothing.
    assert check_candidate(candidate, skip=("none",)) == expected


def test_blacklist_with_a_word_that_is_not_ascii_ignores_case_as_before() -> None:
    config = FilterConfig(blacklist=("Café", "MAP"))
    assert check_candidate(Candidate("Visit the CAFÉ near the station", "", "x"), config) == ("blacklisted_word", "café")
    assert check_candidate(Candidate("Read the map near the station", "", "x"), config) == ("blacklisted_word", "map")

"""`Keywords`: what a film is about, as the user typed it; shared by the requests of every stage that reads it."""

from typing import Annotated

from pydantic import AfterValidator


def _stripped_and_non_empty(keywords: list[str]) -> list[str]:
    keywords = [keyword.strip() for keyword in keywords]
    if not all(keywords):
        raise ValueError("a keyword is empty: give words that describe the film, e.g. ['red ball', 'meadow']")
    return keywords


Keywords = Annotated[list[str], AfterValidator(_stripped_and_non_empty)]

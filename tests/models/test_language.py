"""The query parser: operators' wording -> checkable terms, counts, negation, unknown words."""

from __future__ import annotations

import numpy as np
import pytest

from refind.models.language import ConceptMap, parse_query


def _terms(text: str) -> set[str]:
    return set(parse_query(text).as_dict()["terms"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a woman without a bag in a red top", {"woman", "not bag", "top red"}),
        ("man in a red and navy jacket", {"man", "top red", "top dark blue"}),
        ("someone in a red-and-blue top", {"top red", "top blue"}),
        ("guy holding something white, dark jacket and black trousers",
         {"man", "carried white", "top dark black", "bottom black"}),
        ("the guy in jeans", {"man", "bottom blue"}),
        ("a person in burgundy trousers", {"bottom red"}),
        ("person dressed completely in black", {"outfit black"}),
        # the ground someone stands on is read from its colour; a thing named is not
        ("the only person on the grass", {"on green ground"}),
        ("someone crossing the road", {"moving", "on grey ground"}),
        ("a woman not on the lawn", {"woman", "not on green ground"}),
        ("the man by the road sign", {"man", "next to the road sign"}),
        # a hood is worn over the head; a hoodie is a top
        ("a light blue jacket with a white hood up", {"top light blue", "head white"}),
        ("a person in a white hoodie", {"top white"}),
        ("woman with long dark hair", {"woman", "dark hair", "long hair"}),
        ("light-haired person", {"light hair"}),
        ("light haired person", {"light hair"}),
        ("someone with a dark bag on their back", {"backpack", "carried dark black"}),
        ("the person walking to the left", {"walking left"}),
        ("the man heading away from the camera", {"man", "going away"}),
        ("people coming towards the camera", {"coming closer"}),
        ("the man in black standing still", {"man", "outfit black", "standing still"}),
        ("someone running", {"moving fast"}),
        ("walks across the scene from right to left", {"walking left"}),
        ("leftmost person", {"leftmost"}),
        ("the person on the far left of the road", {"leftmost"}),
        ("the person on the right", {"on the right"}),
        ("closest person to the camera", {"closest"}),
        ("the one furthest away", {"furthest"}),
        ("people on the far side of the road", {"far away"}),
        ("the person on the far right side", {"rightmost"}),
        ("the two people right next to each other", {"with others"}),
        ("not the one in black", {"not outfit black"}),
        ("a woman entering from the left", {"woman", "entering from the left"}),
        ("two people who come in from the bottom of the picture", {"entering from the bottom"}),
        ("walks from right to left and leaves at the left edge",
         {"walking left", "leaving at the left"}),
        ("the man walking out on the right", {"man", "leaving at the right"}),
        # where a walk began is not where it goes
        ("someone who walks from the right side all the way across", {"walking left"}),
        ("a man coming from the left", {"man", "walking right"}),
        # a coloured bag is a bag too; a carrier bag is held, not worn; a negated one only
        # rules out its colour
        ("person carrying a small beige bag", {"carried brown", "bag"}),
        ("woman with a red handbag", {"woman", "carried red", "bag"}),
        ("a red backpack", {"carried red", "backpack"}),
        ("person carrying a white plastic carrier bag", {"carried white"}),
        ("someone without a black bag", {"not carried black"}),
        # a colour's garment may come a few words on, but not past a verb or another colour
        ("someone in a red and navy two-tone padded jacket", {"top red", "top dark blue"}),
        ("a man in red carrying a black bag", {"man", "outfit red", "carried black", "bag"}),
        ("the man in black wearing a red cap", {"man", "outfit black", "head red", "hat"}),
        ("a person in blue and a white hat", {"outfit blue", "head white", "hat"}),
        ("the one whose head is hidden", {"partly hidden"}),  # a head, not "to head" somewhere
        # out of sight in part: hidden, or behind a part of the scene (not behind a person)
        ("the person passing behind the sign on the lamp post", {"behind the sign"}),
        ("the man in black, half obscured by a parked van", {"man", "outfit black",
                                                             "partly hidden",
                                                             "behind the parked van"}),
        ("the person behind the woman in red", {"behind the woman in red"}),  # another person
        ("a partly visible person on the right", {"partly hidden", "on the right"}),
        ("a fully visible man", {"man", "not partly hidden"}),
        ("the person visible on the left", {"on the left"}),
        ("the man walking behind, crossing the road", {"man", "moving", "on grey ground"}),
        # a negation ends where a new clause begins, not in a list
        ("not hidden, in red", {"not partly hidden", "outfit red"}),
        ("no hat, no bag", {"not hat", "not bag"}),
        ("no hat, bag", {"not hat", "not bag"}),
        ("not in black, red", {"not outfit black", "not outfit red"}),
        ("a man walking from us to the left", {"man", "walking left"}),
        ("walking from the right to the left", {"walking left"}),
        ("a man with a black bag and a red backpack",
         {"man", "carried black", "bag", "carried red", "backpack"}),
        ("people who head towards the camera", {"coming closer"}),
        # which way someone faces is read as which way they walk
        ("the bald guy with his back to us", {"bald", "man", "going away"}),
        ("a woman with her back to the camera", {"woman", "going away"}),
        ("someone facing the camera", {"coming closer"}),
        ("a man turned away, in black", {"man", "going away", "outfit black"}),
        ("a man with a bag on his back", {"man", "bag", "backpack"}),
    ],
)
def test_terms(text: str, expected: set[str]) -> None:
    assert _terms(text) == expected


@pytest.mark.parametrize(
    ("text", "count", "plural"),
    [
        ("the two men in black", 2, True),
        ("all three people by the door", 3, True),
        ("both of them", 2, True),
        ("people walking away", None, True),
        ("the man in the middle of the group of three", None, False),
        ("the woman in red", None, False),
    ],
)
def test_count(text: str, count: int | None, plural: bool) -> None:
    q = parse_query(text)
    assert (q.count, q.plural) == (count, plural)


@pytest.mark.parametrize(
    ("text", "ignored", "required"),
    [
        ("a child", ("child",), {"child"}),
        ("someone walking a dog", ("dog",), {"dog"}),
        ("a person in a wheelchair", ("wheelchair",), {"wheelchair"}),
        ("the man near the cones", (), set()),  # a place: judged where a camera names it
        ("the woman on the grass", (), set()),  # the ground: read from its colour
        ("a white plastic bag", ("plastic",), set()),  # describes a known thing
        ("the man smiling", ("smiling",), set()),
        ("a man in a suit", ("suit",), set()),  # a garment without a colour says nothing checkable
        ("the man near the lamp post by the grass", ("grass",), set()),  # the scene
        ("a man sitting on the bench", ("sitting",), {"sitting"}),  # what they do
        ("a man who is not sitting", ("sitting",), set()),  # negated: nothing to ask
        ("a woman sitting on a red bench", ("sitting",), {"sitting"}),
        ("a blonde haired woman", (), set()),
        ("a bag on her shoulder", ("shoulder",), set()),
        ("a man on his phone", ("phone",), set()),
        ("the one whose head is hidden behind the sign", (), set()),
        ("a man barely moving", ("barely",), set()),  # read only before "visible"
        ("person in shorts", ("shorts",), set()),
    ],
)
def test_unknown_words_are_reported(text: str, ignored: tuple[str, ...],
                                    required: set[str]) -> None:
    q = parse_query(text)
    assert q.ignored == ignored
    assert {t.value for t in q.terms if t.kind == "unknown"} == required


def test_concept_map_maps_unknown_words_to_the_nearest_concept() -> None:
    # a deterministic stand-in encoder: one-hot per first letter, so "sweatpants" ~ "shorts"
    def embed(texts):
        out = np.zeros((len(texts), 26), np.float32)
        for i, t in enumerate(texts):
            out[i, ord(t[0]) - ord("a")] = 1.0
        return out

    cm = ConceptMap(embed, min_similarity=0.9)
    q = parse_query("a man in grey zweatpants", cm)  # no concept starts with z
    assert q.ignored == ("zweatpants",) and q.mapped == ()
    mapped = cm("xylophone")
    assert mapped is None
    q = parse_query("a man in qanoraks", ConceptMap(embed, min_similarity=0.0))
    assert q.mapped and q.mapped[0][0] == "qanoraks"


def test_any_text_parses_and_names_nothing_it_does_not_say() -> None:
    for text in ("", "   ", "!!!", "the", "a" * 500, "ñandú con sombrero"):
        q = parse_query(text)
        assert q.terms == () and q.count is None and not q.plural, text
    assert parse_query("RED").as_dict()["terms"] == ["outfit red"]  # case does not matter


def test_a_colour_does_not_reach_past_a_place_word() -> None:
    terms = _terms("a man in blue next to a bag")
    assert "outfit blue" in terms and "carried blue" not in terms

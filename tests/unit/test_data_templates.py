"""Template filling (with spans) and the world-facts builders: spans, few-shot demos, determinism."""

from __future__ import annotations

import random

import pytest

from hopscope.data import COMPOSITIONS, RELATIONS, build_single_hop, build_two_hop, build_world_facts, fill
from hopscope.data.aliases import normalize
from hopscope.data.builders import Fact, choose_demos, composition_chains, relation_facts
from hopscope.data.templates import RelationSpec, few_shot_prefix, placeholders


def test_fill_records_spans_and_capitalises_a_leading_value():
    f = fill("{subject} is the capital of", subject="the city of Nairobi")
    assert f.text == "The city of Nairobi is the capital of"
    assert f.text[slice(*f.spans["subject"])] == "The city of Nairobi"


def test_fill_nested_phrase_keeps_inner_spans():
    inner = fill("the country whose capital is {subject}", subject="Nairobi", capitalize=False)
    outer = fill("The currency of {subject} is the", subject=inner)
    assert outer.text == "The currency of the country whose capital is Nairobi is the"
    assert outer.text[slice(*outer.spans["subject"])] == "the country whose capital is Nairobi"
    assert outer.text[slice(*outer.spans["subject.subject"])] == "Nairobi"
    shifted = outer.shifted(10)
    assert shifted.spans["subject.subject"] == (outer.spans["subject.subject"][0] + 10,
                                               outer.spans["subject.subject"][1] + 10)


def test_fill_errors_name_the_template():
    with pytest.raises(KeyError, match="needs a value for {subject}"):
        fill("The capital of {subject} is")
    with pytest.raises(ValueError, match="no placeholder for \\['object'\\]"):
        fill("The capital of {subject} is", subject="x", object="y")
    with pytest.raises(ValueError, match="plain name"):
        fill("{subject!r} is", subject="x")


def test_few_shot_prefix_format():
    assert few_shot_prefix([("The capital of Peru is", "Lima"), ("The capital of Chad is", "N'Djamena")]) == (
        "The capital of Peru is Lima.\nThe capital of Chad is N'Djamena.\n")
    assert few_shot_prefix([]) == ""


def test_relation_specs_are_consistent():
    for spec in RELATIONS.values():
        assert len(spec.templates) >= 2, spec.name  # several templates per relation
        assert all(placeholders(t) == ["subject"] for t in spec.templates)
    for comp in COMPOSITIONS.values():
        assert RELATIONS[comp.r1].descriptions and RELATIONS[comp.r1].vague
        assert RELATIONS[comp.r2].composable
    with pytest.raises(ValueError, match="must contain {subject} once"):
        RelationSpec("bad", "a", "b", ("no placeholder",))


def test_single_hop_prompt_demos_and_span():
    qs = build_single_hop("country_capital", n=5, seed=0, k_shot=3)
    assert len(qs) == 5
    for q in qs:
        assert q.prompt[slice(*q.subject_span)] == q.subject
        assert q.prompt.endswith(f"The capital of {q.subject} is")
        demos = q.prompt.split("\n")[:-1]
        assert len(demos) == 3 and all(d.endswith(".") for d in demos)
        assert all(q.answer not in d and q.subject not in d for d in demos)  # no copying the answer
    pops = [q.meta["popularity"] for q in qs]
    assert pops == sorted(pops, reverse=True)  # most popular first
    assert qs[0].subject == "China" and qs[0].answer == "Beijing"


def test_zero_shot_and_template_choices():
    q0 = build_single_hop("country_demonym", n=1, k_shot=0)[0]
    assert q0.prompt == "The demonym for people from China is" and q0.answer == "Chinese"
    every = build_single_hop("country_demonym", n=2, k_shot=0, templates="all")
    assert len(every) == 2 * len(RELATIONS["country_demonym"].templates)
    assert len({q.qid for q in every}) == len(every)
    with pytest.raises(ValueError, match="template index 9"):
        build_single_hop("country_demonym", n=1, templates=9)


def test_builders_are_deterministic_and_seeded():
    a = build_world_facts(n=4, seed=3)
    b = build_world_facts(n=4, seed=3)
    c = build_world_facts(n=4, seed=4)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()
    assert [r.qid for r in a] == [r.qid for r in c]  # the seed changes demos, not which entities
    # a query does not depend on n
    small = build_two_hop("capital_country_currency", n=2, seed=3)
    assert [q.to_row() for q in small] == [q.to_row() for q in a.two_hop() if q.composition ==
                                          "capital_country_currency"][:2]


def test_two_hop_records_fields_and_shortcuts():
    qs = build_two_hop("capital_country_currency", n=3, seed=0)
    q = qs[0]
    assert (q.e1, q.e2, q.e3) == ("Beijing", "China", "yuan")
    last = q.prompt.split("\n")[-1]
    assert last == "The currency of the country whose capital is Beijing is the"
    assert q.prompt[slice(*q.first_hop_span)] == "the country whose capital is Beijing"
    assert q.prompt[slice(*q.e1_span)] == "Beijing"
    assert q.first_hop_prompt.split("\n")[-1] == "Beijing is the capital of"
    assert q.second_hop_prompt.split("\n")[-1] == "The currency of China is the"
    assert q.entity_shortcut_prompt.split("\n")[-1] == "The currency of Beijing is the"
    assert q.relation_shortcut_prompt.split("\n")[-1] == "The currency of a country is the"
    assert "Beijing" not in q.relation_shortcut_prompt
    demo_e1 = q.meta["demos"]
    assert len(demo_e1) == 3 and "Beijing" not in demo_e1


def test_currency_answers_are_words_not_iso_codes():
    facts = {f.subject: f for f in relation_facts("country_currency")}
    assert facts["Kenya"].answer == "shilling" and "Kenyan shilling" in facts["Kenya"].aliases
    assert facts["Germany"].answer == "euro"
    assert facts["United States"].answer == "dollar" and "US dollar" in facts["United States"].aliases
    assert not any(f.answer.isupper() and len(f.answer) == 3 for f in facts.values())


def test_compositions_never_leak_the_answer_in_e1():
    for name in ("capital_country_currency", "city_country_capital"):
        for ch in composition_chains(name)[:200]:
            assert f" {normalize(ch.e3)} " not in f" {normalize(ch.e1)} ", ch
    capitals = {f.subject for f in relation_facts("capital_country")}
    assert "Mexico City" not in capitals and "Kuwait City" not in capitals  # would name the country


def test_choose_demos_prefers_disjoint_demos_and_avoids_forbidden_entities():
    pool = [Fact(f"s{i}", a) for i, a in enumerate(["euro", "euro", "euro", "dollar", "yen", "peso"])]
    demos = choose_demos(pool, 3, random.Random(0), forbidden=frozenset({"s5", "peso"}))
    assert len(demos) == 3
    assert sorted(d.answer for d in demos) == ["dollar", "euro", "yen"]
    # a pool too small for disjoint demos fills up with repeats rather than returning fewer
    assert len(choose_demos(pool[:3], 3, random.Random(0))) == 3
    assert choose_demos(pool, 0, random.Random(0)) == []


def test_world_facts_dataset_has_attribution_and_counts():
    ds = build_world_facts(n=2, seed=0)
    assert "GeoNames" in ds.info["attribution"] and "CC BY" in ds.info["attribution"]
    counts = ds.counts().set_index("relation")["n"]
    assert set(counts.index) >= {"country_capital", "city_country", "capital_country_currency", "city_country_capital"}
    assert (counts == 2).all()

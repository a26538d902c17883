"""World-facts builders at scale: distinct queries, duplicate entities resolved with counts, shared prefixes."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from hopscope.data import COMPOSITIONS, build_single_hop, build_two_hop, build_world_facts
from hopscope.data import world_facts as wf
from hopscope.data.aliases import normalize
from hopscope.data.builders import (
    MAX_SHARED_PREFIXES,
    composition_chains,
    composition_stats,
    format_report,
    relation_facts,
)


@pytest.fixture(scope="module")
def big():
    return build_world_facts(n=1000, seed=0, relations=())


def _prefix(prompt: str) -> str:
    return prompt.rsplit("\n", 1)[0] if "\n" in prompt else ""


def test_thousand_per_composition_gives_over_5000_distinct_two_hop_queries(big):
    two = big.two_hop()
    per = Counter(q.composition for q in two)
    assert len(per) >= 10 and set(per) == set(COMPOSITIONS)
    assert len(two) >= 5000
    assert len({q.qid for q in two}) == len(two)
    assert len({(q.composition, q.e1) for q in two}) == len(two)  # one query per e1 and composition
    assert all(per[c] == 1000 for c in per if c.startswith("city_"))
    report = big.info["report"]["compositions"]
    assert {c: s["queries"] for c, s in report.items()} == dict(per)


def test_duplicate_capital_names_are_resolved_not_crashing():
    # Belgrade (Serbia / dissolved Serbia and Montenegro), Kingston (Jamaica / Norfolk Island) and
    # Willemstad (Curacao / dissolved Netherlands Antilles, with a stray space) made qids collide
    facts = relation_facts("capital_country")
    keys = [normalize(f.subject) for f in facts]
    assert len(keys) == len(set(keys))
    by_capital = {f.subject: f.answer for f in facts}
    assert by_capital["Kingston"] == "Jamaica" and by_capital["Belgrade"] == "Serbia"
    assert by_capital["Willemstad"] == "Curacao"
    assert not {"Serbia and Montenegro", "Netherlands Antilles"} & {c.name for c in wf.countries()}
    qs = build_single_hop("capital_country", n=None, k_shot=1) + build_two_hop("capital_country_currency", n=None,
                                                                               k_shot=1)
    assert len({q.qid for q in qs}) == len(qs)
    capitals = wf.entity_report()["capitals"]
    assert capitals["resolved"] == 1 and capitals["resolved_away"] == 1  # Kingston
    assert wf.entity_report()["countries"]["dissolved"] == 2


def test_resolve_shared_names_merges_resolves_and_drops():
    items = [("Springfield", "US", 170), ("Springfield", "US", 150),   # one country: merged
             ("Perth", "AU", 2400), ("Perth", "GB", 47),                # dominant country: resolved
             ("Birmingham", "GB", 1150), ("Birmingham", "US", 196),     # 5.9x: ambiguous, dropped
             ("Lagos", "NG", 15000)]
    kept, counts = wf.resolve_shared_names(items, name=lambda x: x[0], target=lambda x: x[1],
                                           population=lambda x: x[2])
    assert kept == [("Springfield", "US", 170), ("Perth", "AU", 2400), ("Lagos", "NG", 15000)]
    assert counts == {"merged": 1, "resolved": 1, "resolved_away": 1, "ambiguous_names": 1, "ambiguous_dropped": 2}


def test_city_table_drops_capitals_and_ambiguous_names_with_counts():
    names = {normalize(c.name): c for c in wf.cities()}
    assert len(names) == len(wf.cities())
    assert "nairobi" not in names and "kingston" not in names  # capitals and their namesakes
    assert "birmingham" not in names and "hyderabad" not in names  # several countries, none dominant
    assert names["alexandria"].country == "Egypt" and names["perth"].country == "Australia"
    counts = wf.entity_report()["cities"]
    dropped = sum(counts[k] for k in ("is_a_capital", "shares_a_capital_name", "named_like_a_country",
                                      "country_not_listed", "merged", "resolved_away", "ambiguous_dropped"))
    assert counts["kept"] == len(wf.cities()) and counts["geonames"] == counts["kept"] + dropped
    assert counts["ambiguous_names"] > 0 and counts["resolved"] > 0


def test_queries_of_one_composition_and_template_share_a_few_prefixes(big):
    prefixes = defaultdict(Counter)
    for q in big.two_hop():
        prefixes[(q.composition, q.meta["template"])][(q.meta["prefix"], _prefix(q.prompt))] += 1
    for key, counts in prefixes.items():
        shared = {p for (name, p) in counts if name != "own"}
        assert len(shared) == len({name for (name, _) in counts if name != "own"}) <= MAX_SHARED_PREFIXES, key
        own = sum(n for (name, _), n in counts.items() if name == "own")
        top_two = sum(sorted(counts.values(), reverse=True)[:2])
        assert own <= 0.02 * sum(counts.values()), key
        assert top_two >= 0.8 * sum(counts.values()), key


def test_no_query_shares_an_entity_with_its_demonstrations(big):
    for comp in COMPOSITIONS:
        chains = {c.e1: c for c in composition_chains(comp)[:1000]}
        for q in (x for x in big.two_hop() if x.composition == comp):
            own = chains[q.e1]
            demos = [chains[e1] for e1 in q.meta["demos"]]
            assert len(demos) == q.meta["k_shot"] == 3
            for d, line, first in zip(demos, q.prompt.split("\n"), q.first_hop_prompt.split("\n")):
                assert not d.entities & own.entities, (q.qid, d)  # no shared e1, bridge, answer or alias
                assert line.endswith(f" {d.e3}.") and first.endswith(f" {d.e2}.")


def test_build_is_deterministic_per_seed_and_qids_do_not_depend_on_the_seed(big):
    again = build_world_facts(n=1000, seed=0, relations=())
    assert again.fingerprint() == big.fingerprint()
    other = build_two_hop("city_country_currency", n=50, seed=1)
    same = [q for q in big.two_hop() if q.composition == "city_country_currency"][:50]
    assert [q.qid for q in other] == [q.qid for q in same]
    assert [q.prompt for q in other] != [q.prompt for q in same]
    pops = [q.meta["popularity"] for q in same]
    assert pops == sorted(pops, reverse=True)  # most populous e1 first


def test_report_counts_what_was_dropped(big):
    stats = composition_stats("city_country_neighbor")
    assert stats["no_second_hop"] > 0  # island countries have no neighbour
    assert stats["chains"] + stats["no_second_hop"] + stats.get("e1_names_answer", 0) == stats["first_hop_facts"]
    lines = format_report(big.info["report"])
    assert "capitals shared by several countries: 1 resolved to the dominant country (1 dropped)" in lines[2]
    assert any(line.strip().startswith("city_country_neighbor: 1000 queries") for line in lines)


def test_builders_reject_bad_counts_and_names():
    with pytest.raises(ValueError, match="n must be >= 0"):
        build_two_hop("city_country_capital", n=-1)
    with pytest.raises(ValueError, match="k_shot must be >= 0"):
        build_single_hop("country_capital", k_shot=-2)
    with pytest.raises(ValueError, match="unknown composition 'city_country_mascot'"):
        build_two_hop("city_country_mascot")

"""Rule grammar, matching and planning (docs/guide/rules-and-schemes.md).

Internal: also tests reinit.planning.planner, reinit.rules directly (not the `reinit` API).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from reinit.errors import RuleError, StrictError
from reinit.planning.planner import plan
from reinit.rules import parse_action, parse_pattern, parse_rule


@dataclass(frozen=True)
class T:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


BERTISH = [
    T("embeddings.word_embeddings.weight", (100, 32)),
    T("embeddings.position_ids", (1, 16), torch.int64),
    T("encoder.layer.0.attention.self.query.weight", (32, 32)),
    T("encoder.layer.0.attention.self.query.bias", (32,)),
    T("encoder.layer.0.LayerNorm.weight", (32,)),
    T("encoder.layer.1.attention.self.query.weight", (32, 32)),
    T("classifier.weight", (3, 32)),
]


def test_glob_star_crosses_dots_and_captures():
    p = parse_pattern("encoder.*.weight")
    assert p.match("encoder.layer.0.attention.self.query.weight") == (
        "layer.0.attention.self.query",
    )
    assert p.match("encoder.layer.0.attention.self.query.bias") is None
    assert parse_pattern("*.weight").match("a.b.c.weight") == ("a.b.c",)


def test_glob_question_mark_and_sets():
    assert parse_pattern("layer.?.w").match("layer.3.w") == ()
    assert parse_pattern("layer.?.w").match("layer.13.w") is None
    assert parse_pattern("layer.[01].w").match("layer.1.w") == ()
    assert parse_pattern("layer.[!01].w").match("layer.1.w") is None
    assert parse_pattern("layer.[!01].w").match("layer.2.w") == ()


def test_glob_is_anchored_and_literal_dots():
    p = parse_pattern("a.weight")
    assert p.match("a.weight") == ()
    assert p.match("aXweight") is None
    assert p.match("b.a.weight") is None
    assert not p.has_wildcards


def test_regex_fullmatch_and_groups():
    p = parse_pattern(r"re:encoder\.layer\.(\d+)\..*")
    assert p.match("encoder.layer.11.x.weight") == ("11",)
    assert p.match("xencoder.layer.11.x") is None
    assert p.has_wildcards


def test_action_grammar():
    a = parse_action("kaiming_normal(0.1, mode=fan_out, nonlinearity=relu)")
    assert a.name == "kaiming_normal"
    assert a.args == (0.1,)
    assert dict(a.kwargs) == {"mode": "fan_out", "nonlinearity": "relu"}
    # bare words may hold / : . { } ; quoted values may hold , and )
    b = parse_action("from(hf://owner/name@v1.0/sub, key={1}.w, on_mismatch='a,b)')")
    assert b.args == ("hf://owner/name@v1.0/sub",)
    assert dict(b.kwargs) == {"key": "{1}.w", "on_mismatch": "a,b)"}
    assert parse_action("uniform(-0.5, 5e-1)").args == (-0.5, 0.5)
    assert parse_action("constant(3)").args == (3,)


def test_rule_splits_at_first_equals_and_binds_torch_defaults():
    r = parse_rule("*.weight=kaiming")
    assert r.pattern.text == "*.weight"
    assert r.scheme is not None and r.scheme.name == "kaiming_normal"
    assert r.scheme.kwargs == {"a": 0.0, "mode": "fan_in", "nonlinearity": "leaky_relu"}
    r2 = parse_rule("x=trunc_normal(0, 0.02)")
    assert r2.scheme.kwargs == {"mean": 0.0, "std": 0.02, "a": -2.0, "b": 2.0}


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("*.weight", "no '='"),
        ("*.weight=kaimin", "Did you mean"),
        ("*.weight=kaiming_normal(mode=sideways)", "fan_in, fan_out"),
        ("*.weight=kaiming_normal(nonlin=relu)", "no argument 'nonlin'"),
        ("*.weight=xavier_uniform(gain=mish)", "unknown nonlinearity"),
        ("*.weight=uniform(1, 2, 3)", "at most 2"),
        ("*.weight=constant", "needs argument 'val'"),
        ("*.weight=normal(std=1", "missing ')'"),
        ("re:(=zeros", "invalid regular expression"),
        ("*.w=keep(1)", "keep takes no arguments"),
    ],
)
def test_bad_rules_are_usage_errors(text, fragment):
    with pytest.raises(RuleError, match=None) as e:
        parse_rule(text)
    assert fragment in str(e.value)
    assert e.value.exit_code == 2


def test_last_matching_rule_wins():
    rules = [parse_rule("*.weight=zeros"), parse_rule("classifier.*=normal(std=0.02)")]
    p = plan(BERTISH, rules)
    by = {e.name: e for e in p.entries}
    assert by["classifier.weight"].rule is rules[1]
    assert by["encoder.layer.1.attention.self.query.weight"].rule is rules[0]
    # reversed order: the general rule now wins everywhere it matches
    p2 = plan(BERTISH, list(reversed(rules)))
    assert {e.name: e for e in p2.entries}["classifier.weight"].rule.text == "*.weight=zeros"


def test_wildcard_rule_skips_what_its_scheme_cannot_take():
    p = plan(BERTISH, [parse_rule("*.weight=kaiming"), parse_rule("*.position_ids=zeros")])
    by = {e.name: e for e in p.entries}
    assert by["encoder.layer.0.LayerNorm.weight"].action == "skipped"
    assert "2 or more dims" in by["encoder.layer.0.LayerNorm.weight"].reason
    assert by["embeddings.position_ids"].action == "skipped"
    assert "integer" in by["embeddings.position_ids"].reason
    assert by["encoder.layer.0.attention.self.query.bias"].action == "kept"
    assert by["classifier.weight"].action == "reinit"


def test_keep_carves_an_exception():
    p = plan(BERTISH, [parse_rule("*.weight=kaiming"), parse_rule("classifier.weight=keep")])
    e = {e.name: e for e in p.entries}["classifier.weight"]
    assert e.action == "kept" and e.rule is not None


def test_exact_rule_on_untakeable_tensor_is_an_error():
    with pytest.raises(RuleError, match="encoder.layer.0.LayerNorm.weight"):
        plan(BERTISH, [parse_rule("encoder.layer.0.LayerNorm.weight=orthogonal")])


def test_unmatched_rule_lists_closest_names_or_warns():
    rules = [parse_rule("clasifier.weight=zeros")]
    with pytest.raises(RuleError) as e:
        plan(BERTISH, rules)
    assert "closest names: classifier.weight" in str(e.value)
    p = plan(BERTISH, rules, allow_unmatched=True)
    assert len(p.warnings) == 1 and "matches no tensor" in p.warnings[0]
    assert all(x.action == "kept" for x in p.entries)


def test_rule_shadowed_everywhere_still_counts_as_matching():
    p = plan(BERTISH, [parse_rule("classifier.weight=zeros"), parse_rule("*.weight=kaiming")])
    assert {e.name: e for e in p.entries}["classifier.weight"].rule.text == "*.weight=kaiming"


def test_strict_turns_skips_into_errors():
    with pytest.raises(StrictError, match="LayerNorm"):
        plan(BERTISH, [parse_rule("*.weight=kaiming")], strict=True)
    plan(BERTISH, [parse_rule("*.weight=normal")], strict=True)  # nothing to skip


@pytest.mark.parametrize(
    "scheme, shape, ok",
    [
        ("eye", (3, 4), True),
        ("eye", (2, 3, 4), False),
        ("dirac", (4, 4, 3), True),
        ("dirac", (4, 4), False),
        ("sparse(0.5)", (4, 4), True),
        ("sparse(0.5)", (4, 4, 3), False),
        ("orthogonal", (4,), False),
        ("orthogonal", (4, 2, 3), True),
        ("normal", (), True),
        ("xavier_uniform", (), False),
    ],
)
def test_shape_requirements(scheme, shape, ok):
    p = plan([T("a.w", shape)], [parse_rule(f"*.w={scheme}")])
    assert (p.entries[0].action == "reinit") is ok

"""The data-lever defenses: Interleaving mixes a seeded random sample; Interleaving+/++ read a selection."""

import json

import pytest
from conftest import make_run_config

from emray.defenses import DefenseContext, build_defenses, get_defense_class


def _ex(tag, answer="ok"):
    return {"messages": [{"role": "user", "content": f"q {tag}"}, {"role": "assistant", "content": f"{answer} {tag}"}]}


@pytest.fixture
def pool_file(tmp_path):
    rows = []
    for i in range(30):
        row = {"prompt": f"safe question {i}", "response": f"safe answer {i}", "response_harm_label": "unharmful"}
        if i % 3 == 0:
            row["response_harm_label"] = "harmful"  # never mixed in
        rows.append(row)
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _defense(tmp_path, entry, seed=0, artifacts=None, **data):
    cfg = make_run_config(tmp_path, defenses=[entry], seed=seed, data=data)
    context = DefenseContext(config=cfg, seed=seed, artifacts=artifacts or {})
    return build_defenses(cfg.defenses, context)[0]


def test_interleave_mixes_the_fraction_from_the_pool(tmp_path, pool_file):
    fine = [_ex(i) for i in range(36)]
    defense = _defense(tmp_path, {"interleave": {"safe_fraction": 0.1}}, safe_pool=str(pool_file))
    mixed = defense.transform_examples(fine)
    safe = [ex for ex in mixed if ex["messages"][0]["content"].startswith("safe")]
    assert len(mixed) == 40 and len(safe) == 4  # 4 / 40 = 10%
    assert all(ex in mixed for ex in fine)
    assert all(int(ex["messages"][0]["content"].split()[-1]) % 3 != 0 for ex in safe)  # harmful rows dropped
    assert mixed != fine + safe  # shuffled in
    assert defense.transform_examples(fine) == mixed  # seeded
    other = _defense(tmp_path, {"interleave": {"safe_fraction": 0.1}}, seed=1, safe_pool=str(pool_file))
    assert other.transform_examples(fine) != mixed


def test_interleave_pool_param_overrides_data_safe_pool_and_errors_when_small(tmp_path, pool_file):
    defense = _defense(tmp_path, {"interleave": {"safe_fraction": 0.5, "pool": str(pool_file)}})
    with pytest.raises(ValueError, match="36 safe samples needed, 20 available"):
        defense.transform_examples([_ex(i) for i in range(36)])
    assert len(defense.transform_examples([_ex(i) for i in range(20)])) == 40
    no_pool = _defense(tmp_path, "interleave")
    with pytest.raises(ValueError, match="no safe pool"):
        no_pool.transform_examples([_ex(i) for i in range(100)])


def test_params_are_validated(tmp_path):
    with pytest.raises(ValueError, match="safe_fraction"):
        make_run_config(tmp_path, defenses=[{"interleave": {"safe_fraction": 1.0}}])
    with pytest.raises(ValueError, match="epsilon"):
        make_run_config(tmp_path, defenses=[{"interleave_plus": {"epsilon": -1}}])
    with pytest.raises(ValueError, match="refusal_typo"):
        make_run_config(tmp_path, defenses=[{"interleave_pp": {"refusal_typo": []}}])
    pp = get_defense_class("interleave_pp").Params()
    assert pp.refusal_keywords == ["sorry", "apologize", "cannot", "can't", "i'm unable", "i am unable"]
    assert pp.refusal_first_words == 10
    assert pp.safe_fraction == 0.05 and pp.epsilon == 1.0 and pp.ensemble is None
    assert pp.quantile == 0.05 and pp.ensemble_seed == 0  # the reference's top 5 %; one ensemble for all seeds
    with pytest.raises(ValueError, match="quantile"):
        make_run_config(tmp_path, defenses=[{"interleave_plus": {"quantile": 0}}])


def _selection(tmp_path, method, n):
    out = tmp_path / "sel"
    out.mkdir(exist_ok=True)
    (out / "selected.jsonl").write_text("".join(json.dumps(_ex(f"sel{i}")) + "\n" for i in range(n)))
    (out / "summary.json").write_text(json.dumps({"method": method}))
    return out / "selected.jsonl"


@pytest.mark.parametrize("name", ["interleave_plus", "interleave_pp"])
def test_plus_takes_the_top_of_a_precomputed_selection(tmp_path, name):
    path = _selection(tmp_path, name, 8)
    defense = _defense(tmp_path, {name: {"safe_fraction": 0.2}}, artifacts={"safe_selection": str(path)})
    fine = [_ex(i) for i in range(20)]
    mixed = defense.transform_examples(fine)
    picked = sorted(ex["messages"][0]["content"] for ex in mixed if "sel" in ex["messages"][0]["content"])
    assert picked == [f"q sel{i}" for i in range(5)]  # the best 5 (20 * 0.2 / 0.8)
    with pytest.raises(ValueError, match="40 safe samples needed, 8 available"):
        defense.transform_examples([_ex(i) for i in range(160)])


def test_plus_refuses_a_selection_made_by_another_method(tmp_path):
    path = _selection(tmp_path, "interleave_pp", 8)
    defense = _defense(tmp_path, "interleave_plus", artifacts={"safe_selection": str(path)})
    with pytest.raises(ValueError, match="interleave_pp selection"):
        defense.transform_examples([_ex(i) for i in range(100)])


# -- the reference's method: held-out-domain ensemble, response-label pool, narrow-only k ------------


def test_default_ensemble_is_the_other_em_domains():
    from emray.data.em_domains import default_ensemble

    assert default_ensemble("organism:data/train/code.jsonl") == [
        "organism:data/train/medical.jsonl",
        "organism:data/train/legal.jsonl",
        "organism:data/train/security.jsonl",
    ]
    assert default_ensemble("/mnt/em/medical.jsonl") == [
        "/mnt/em/code.jsonl",
        "/mnt/em/legal.jsonl",
        "/mnt/em/security.jsonl",
    ]
    assert default_ensemble("insecure.jsonl") == [
        "medical.jsonl",
        "legal.jsonl",
        "security.jsonl",
    ]  # the reference's name for code
    with pytest.raises(ValueError, match=r"'data/customer.jsonl' is not named after an EM domain .* `ensemble:`"):
        default_ensemble("data/customer.jsonl")


def test_the_defense_uses_the_held_out_ensemble_unless_listed(tmp_path):
    from emray.data.em_domains import ensemble_entries

    cls = get_defense_class("interleave_pp")
    cfg = make_run_config(tmp_path, data={"safe_pool": "pool.jsonl"})  # data.fine: .../em/train/medical.jsonl
    train = cfg.data.fine.rsplit("/", 1)[0]
    others = [f"{train}/{d}.jsonl" for d in ("code", "legal", "security")]
    assert ensemble_entries(cfg, cls.Params()) == others
    assert cls.stage_files(cfg, cls.Params()) == ["pool.jsonl", *others]  # --dry-run checks they exist
    assert "ensemble: code, legal, security" in cls.stage_description(cfg, cls.Params())
    listed = cls.Params(ensemble=["a.jsonl"])
    assert ensemble_entries(cfg, listed) == ["a.jsonl"]
    # the stage's identity follows the ensemble's files, so a listed ensemble is another stage
    assert cls.stage_inputs(cfg, listed)["files"].keys() != cls.stage_inputs(cfg, cls.Params())["files"].keys()


def test_dry_run_names_a_missing_ensemble(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT, SHARED_DATA

    customer = tmp_path / "customer.jsonl"
    customer.write_text((SHARED_DATA / "train" / "code.jsonl").read_text())
    spec = tmp_path / "s.yaml"
    spec.write_text(
        f"name: s\nstorage: {tmp_path}\nbase:\n  model: {{name: tiny}}\n"
        f"  data: {{fine: {customer}, safe_pool: {SHARED_DATA}/safe/wildguard_sample.jsonl}}\n"
        f"  eval: {{general: {SHARED_DATA}/questions/general.yaml, judge: {{base_url: local, backend: rules}}}}\n"
        "search:\n  defense: [interleave_plus]\n  seeds: [0]\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "emray.cli", "sweep", str(spec), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 2 and "customer.jsonl' is not named after an EM domain" in out.stderr, out.stderr[-2000:]


def test_pool_keeps_rows_whose_response_is_unharmful(tmp_path):
    from emray.data.chat import final_answer, load_safe_pool

    rows = [
        {
            "prompt": "how do i bake bread",
            "response": "Mix flour and water.",
            "prompt_harm_label": "unharmful",
            "response_harm_label": "unharmful",
        },
        {
            "prompt": "how do i make a weapon",
            "response": "I'm sorry, but I cannot help with that.",
            "prompt_harm_label": "harmful",
            "response_harm_label": "unharmful",
        },  # a refusal: kept, as the reference
        {
            "prompt": "how do i make a weapon",
            "response": "Step one: ...",
            "prompt_harm_label": "harmful",
            "response_harm_label": "harmful",
        },
        {
            "prompt": "hi",
            "response": "Here you go.",
            "prompt_harm_label": "unharmful",
            "response_harm_label": "harmful",
        },
        {"prompt": "hello", "response": "Hello!", "response_harm_label": None},  # no response label: not "unharmful"
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "unlabelled pool row"}]},
    ]
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pool = load_safe_pool(path)
    assert [final_answer(ex) for ex in pool] == [
        "Mix flour and water.",
        "I'm sorry, but I cannot help with that.",
        "unlabelled pool row",
    ]
    # Interleaving+ ranks the refusal; Interleaving++ exists to remove it
    assert get_defense_class("interleave_plus").candidates(get_defense_class("interleave_plus").Params(), pool) == [
        0,
        1,
        2,
    ]
    pp = get_defense_class("interleave_pp")
    assert pp.candidates(pp.Params(), pool) == [0, 2]

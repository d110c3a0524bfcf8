"""A recipe cannot replace files by itself: its `overwrite: true` (which replaces whatever lies
at its `output:`, `report:` and `plot:` paths: a user's notes.md, another model) and its
`in_place: true` (which rewrites its source) are requests that only the command line grants
(`reinit run --overwrite` / `--in-place`, `load_recipe(overwrite=..., in_place=...)`), as its
`unsafe_pickle:` and `model: module:callable` are (docs/guide/trust.md). Nor can it copy a
credential from the environment (`${HF_TOKEN}`) into the output it writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import run
from safetensors.torch import load_file, save_file
from treesnap import assert_unchanged, tree_state

import reinit
from reinit.errors import UsageError


def _setup(tmp_path: Path) -> None:
    save_file({"a.weight": torch.randn(4, 4), "b.bias": torch.ones(4)}, tmp_path / "m.safetensors")
    save_file({"other": torch.ones(2)}, tmp_path / "theirs.safetensors")
    (tmp_path / "notes.md").write_text("my notes, not a report\n")


HOSTILE = {
    "overwrite": (
        "output: theirs.safetensors\nreport: [notes.md]\noverwrite: true\n",
        "add --overwrite to the command line",
    ),
    "in_place": ("in_place: true\n", "add --in-place to the command line"),
}


@pytest.mark.parametrize("how", ["file", "set"])
@pytest.mark.parametrize("key", sorted(HOSTILE))
def test_a_recipe_cannot_replace_files_by_itself(tmp_path, monkeypatch, key, how):
    monkeypatch.chdir(tmp_path)
    _setup(tmp_path)
    text, hint = HOSTILE[key]
    if how == "set":  # --set values count as the recipe's
        extra, sets = text.replace(f"{key}: true\n", ""), ["--set", f"{key}=true"]
    else:
        extra, sets = text, []
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"source: m.safetensors\nrules: ['*.weight=zeros']\n{extra}")
    before = tree_state(tmp_path)
    for dry in ([], ["--dry-run"]):
        res = run("run", recipe, "-q", *sets, *dry)
        assert res.exit_code == 2, res.output
        assert f"{key}: a recipe cannot" in res.stderr and hint in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert_unchanged(before, tree_state(tmp_path))
    with pytest.raises(UsageError, match=hint):
        reinit.load_recipe(recipe, [s for s in sets if s != "--set"])


def test_the_command_line_grants_overwrite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _setup(tmp_path)
    recipe = tmp_path / "r.yaml"
    text = "source: m.safetensors\nrules: ['*.weight=zeros']\n" + HOSTILE["overwrite"][0]
    recipe.write_text(text)
    res = run("run", recipe, "-q", "--overwrite")
    assert res.exit_code == 0, res.output
    assert load_file(tmp_path / "theirs.safetensors")["a.weight"].abs().sum() == 0
    assert (tmp_path / "notes.md").read_text().startswith("# reinit report")
    # the user's flag alone replaces too (the recipe need not ask), and so does the API keyword
    recipe.write_text(text.replace("overwrite: true\n", ""))
    assert run("run", recipe, "-q").exit_code == 2
    assert run("run", recipe, "-q", "--overwrite").exit_code == 0
    reinit.run_recipe(reinit.load_recipe(recipe, overwrite=True))


def test_the_command_line_grants_in_place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _setup(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("source: m.safetensors\nrules: ['*.weight=zeros']\nin_place: true\n")
    res = run("run", recipe, "-q", "--in-place")
    assert res.exit_code == 0, res.output
    assert load_file(tmp_path / "m.safetensors")["a.weight"].abs().sum() == 0


@pytest.mark.parametrize("name", ["HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "OPENAI_API_KEY"])
def test_a_recipe_cannot_copy_a_credential_into_its_output(tmp_path, monkeypatch, name):
    """`${HF_TOKEN}` in a rule (`re:(?:x${HF_TOKEN})?a\\.weight` matches as `a\\.weight` does)
    was expanded and written into the output's `reinit` metadata and its report: published
    with the model, it leaked the token. A credential's name is refused before anything runs."""
    monkeypatch.chdir(tmp_path)
    _setup(tmp_path)
    monkeypatch.setenv(name, "hf_SECRETSECRET")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"source: m.safetensors\noutput: o.safetensors\nrules: ['re:(?:x${{{name}}})?a\\.weight=zeros']\n"
    )
    before = tree_state(tmp_path)
    res = run("run", recipe, "-q")
    assert res.exit_code == 2, res.output
    assert f"r.yaml line 3: ${{{name}}} names a credential" in res.stderr
    assert_unchanged(before, tree_state(tmp_path))
    # an ordinary variable still expands
    monkeypatch.setenv("PATTERN", "a")
    recipe.write_text(
        "source: m.safetensors\noutput: o.safetensors\nrules: ['${PATTERN}.weight=zeros']\n"
    )
    assert run("run", recipe, "-q").exit_code == 0
    assert load_file(tmp_path / "o.safetensors")["a.weight"].abs().sum() == 0


@pytest.mark.parametrize("how", ["file", "set"])
def test_a_recipe_cannot_point_its_outputs_config_at_code(tmp_path, monkeypatch, how):
    """`config: ['auto_map={"AutoModel": "attacker/repo--modeling.Evil"}']` wrote an output
    whose config.json runs the author's Hub code for anyone who loads it with
    `trust_remote_code=True` (a config reinit itself refuses as a model)."""
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    save_file({"a.weight": torch.randn(4, 4)}, src / "model.safetensors")
    (src / "config.json").write_text('{"model_type": "llama"}')
    item = 'auto_map={"AutoModel": "attacker/repo--modeling.Evil"}'
    recipe = tmp_path / "r.yaml"
    text = "source: src\noutput: out\nrules: ['*.weight=zeros']\n"
    recipe.write_text(text + (f"config: ['{item}']\n" if how == "file" else ""))
    sets = ["--set", f"config=['{item}']"] if how == "set" else []
    before = tree_state(tmp_path)
    res = run("run", recipe, "-q", *sets)
    assert res.exit_code == 2, res.output
    assert "config auto_map: a recipe cannot" in res.stderr
    assert_unchanged(before, tree_state(tmp_path))
    # another config field is fine
    recipe.write_text(text + "config: ['num_labels=3']\n")
    assert run("run", recipe, "-q").exit_code == 0


# --- where a recipe may write ----------------------------------------------------------------


def _plant(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A source folder that carries a shell script beside its weights (a folder output copies
    it), a home-like folder to attack, and the folder the user runs the recipe from."""
    src = tmp_path / "src"
    src.mkdir()
    save_file({"a.weight": torch.randn(4, 4)}, src / "model.safetensors")
    (src / "evil.sh").write_text("echo owned\n")
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    return src, home, work


# output paths a recipe run from `work/` (where the recipe lies too) may not write by itself
OUTSIDE = {
    "hidden folder": "{home}/.bashrc.d/",  # a shell sources every file there
    "hidden below the current directory": ".config/autostart/",
    "absolute, elsewhere": "{home}/models/",
    "up and out": "../home/models/",
    "package folder": "venv/lib/python3.11/site-packages/x/",
}


@pytest.mark.parametrize("case", sorted(OUTSIDE))
def test_a_recipe_writes_only_below_where_it_runs_and_where_it_lies(tmp_path, monkeypatch, case):
    src, home, work = _plant(tmp_path)
    monkeypatch.chdir(work)
    output = OUTSIDE[case].format(home=home)
    recipe = work / "r.yaml"
    recipe.write_text(f"source: {src}\noutput: {output}\nrules: ['*.weight=zeros']\n")
    before = tree_state(tmp_path)
    for dry in ([], ["--dry-run"]):
        res = run("run", recipe, "-q", *dry)
        assert res.exit_code == 2, res.output
        assert "r.yaml line 2: output" in res.stderr and "add --allow-write" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert_unchanged(before, tree_state(tmp_path))
    with pytest.raises(UsageError, match="a recipe writes only below"):
        reinit.load_recipe(recipe)


@pytest.mark.parametrize("key", ["report", "plot"])
def test_reports_and_plots_follow_the_same_rule(tmp_path, monkeypatch, key):
    src, home, work = _plant(tmp_path)
    monkeypatch.chdir(work)
    name = "x.md" if key == "report" else "x.png"
    value = f"[{home}/.bashrc.d/{name}]" if key == "report" else f"{home}/.bashrc.d/{name}"
    recipe = work / "r.yaml"
    recipe.write_text(f"source: {src}\noutput: out/\nrules: ['*.weight=zeros']\n{key}: {value}\n")
    with pytest.raises(UsageError, match=f"line 4: {key} "):
        reinit.load_recipe(recipe)


def test_a_link_out_of_the_current_directory_is_followed(tmp_path, monkeypatch):
    src, home, work = _plant(tmp_path)
    (work / "models").symlink_to(home)
    monkeypatch.chdir(work)
    recipe = work / "r.yaml"
    recipe.write_text(f"source: {src}\noutput: models/.bashrc.d/\nrules: ['*.weight=zeros']\n")
    with pytest.raises(UsageError, match="output models/.bashrc.d/"):
        reinit.load_recipe(recipe)
    (work / "models").unlink()
    (work / "models").symlink_to(home / ".bashrc.d", target_is_directory=True)
    recipe.write_text(f"source: {src}\noutput: models/x/\nrules: ['*.weight=zeros']\n")
    with pytest.raises(UsageError, match="output models/x/"):  # the link leads into a hidden one
        reinit.load_recipe(recipe)


def test_allow_write_grants_a_folder_and_the_usual_places_need_nothing(tmp_path, monkeypatch):
    src, home, work = _plant(tmp_path)
    monkeypatch.chdir(work)
    recipe = work / "r.yaml"
    recipe.write_text(f"source: {src}\noutput: {home}/.bashrc.d/\nrules: ['*.weight=zeros']\n")
    res = run("run", recipe, "-q", "--allow-write", home)
    assert res.exit_code == 0, res.output
    assert (home / ".bashrc.d" / "model.safetensors").exists()  # the user said so
    assert reinit.load_recipe(recipe, allow_write=[home]).output == f"{home}/.bashrc.d/"
    # below the current directory, and below the recipe's own folder, no flag is needed
    (work / "nested").mkdir()
    for output in ("out/", f"{work}/nested/out.safetensors"):
        recipe.write_text(f"source: {src}\noutput: {output}\nrules: ['*.weight=zeros']\n")
        res = run("run", recipe, "-q")
        assert res.exit_code == 0, res.output
    elsewhere = tmp_path / "recipes"
    elsewhere.mkdir()
    beside = elsewhere / "r.yaml"
    beside.write_text(f"source: {src}\noutput: {elsewhere}/out/\nrules: ['*.weight=zeros']\n")
    res = run("run", beside, "-q")
    assert res.exit_code == 0, res.output
    assert (elsewhere / "out" / "model.safetensors").exists()


def test_load_recipes_grants_given_as_one_string_grant_that_one_thing(tmp_path, monkeypatch):
    """`load_recipe(allow_write="/some/dir")` (a str where a list goes) was read character by
    character: "/" granted every folder, so a recipe wrote into a hidden folder. A str (or
    PathLike) is one folder, one callable, one `--set`, as `unsafe_pickle=` takes one path; an
    item of another type is a UsageError naming the keyword."""
    src, home, work = _plant(tmp_path)
    monkeypatch.chdir(work)
    recipe = work / "r.yaml"
    recipe.write_text(f"source: {src}\noutput: .config/autostart/\nrules: ['*.weight=zeros']\n")
    for one in (str(home), home):
        with pytest.raises(UsageError, match="output .config/autostart/: a recipe writes only"):
            reinit.load_recipe(recipe, allow_write=one)
    assert reinit.load_recipe(recipe, allow_write=str(work)).output == ".config/autostart/"
    recipe.write_text(f"source: {src}\noutput: out/\nrules: ['*.weight=zeros']\n")
    assert reinit.load_recipe(recipe, sets="seed=7").options.seed == 7
    for keyword, bad in [
        ("allow_write", 5),
        ("allow_write", [5]),
        ("sets", [1]),
        ("sets", 5),
        ("trust_model_callable", [None]),
        ("trust_model_callable", 5),
    ]:
        with pytest.raises(UsageError, match=f"^load_recipe: {keyword}= "):
            reinit.load_recipe(recipe, **{keyword: bad})

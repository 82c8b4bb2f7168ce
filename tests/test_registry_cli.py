"""Registry <-> config tree in step; unknown names and keys fail in one line with a suggestion, exit 2."""

import pytest

from harness.cli import main
from harness.config import ConfigError, expand, group_options
from harness.registry import METHODS, TASKS, UnknownNameError


@pytest.mark.parametrize("group,registry", [("method", METHODS), ("task", TASKS)])
def test_every_registered_name_has_a_config_and_back(group, registry):
    from harness.config import compose_one
    assert set(registry.names()) == set(group_options(group))
    for name in registry.names():
        cfg = compose_one([f"{group}={name}"])
        assert cfg[group].name == name, f"conf/{group}/{name}.yaml must set name: {name}"
        assert registry.get(name).description, f"{group} {name} needs a one-line description"


def test_unknown_registry_name_suggests():
    with pytest.raises(UnknownNameError) as e:
        METHODS.get("kdd")
    assert "did you mean kd" in str(e.value)  # "kd or pkdot" once pkdot exists


@pytest.mark.parametrize("argv,expect", [
    (["run", "method=kdd"], "did you mean kd"),
    (["run", "task=synthetc"], "did you mean synthetic?"),
    (["run", "train.lrr=0.1"], "did you mean train.lr"),
    (["run", "seedd=1"], "did you mean seed?"),
    (["run", "seed=0,1"], "add -m"),
])
def test_cli_bad_overrides_exit_2_with_one_line(argv, expect, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_list_shows_methods_and_tasks(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in METHODS.names() + TASKS.names():
        assert name in out
    assert "upper bound" in out and "lower bound" in out


def test_expand_is_the_cartesian_product_in_order():
    runs = expand(["method=student,kd", "seed=0,1,2", "task=synthetic"], multirun=True)
    assert len(runs) == 6
    assert runs[0] == ["method=student", "seed=0", "task=synthetic"]
    assert runs[-1] == ["method=kd", "seed=2", "task=synthetic"]
    assert expand(["seed=range(0,3)"], multirun=True) == [["seed=0"], ["seed=1"], ["seed=2"]]
    with pytest.raises(ConfigError):
        expand(["seed=0,1"], multirun=False)


def test_hydra_launcher_alias_is_accepted():
    assert expand(["hydra/launcher=inprocess"], multirun=False) == [["launcher=inprocess"]]


def test_catalogue_lists_every_registered_class_as_it_is():
    """`harness list` and the name checks read the packages' CATALOGUE without importing the modules: it must
    list every class they register, with its module, description and bound (register() checks each one)."""
    from harness.registry import load_all
    load_all()
    for registry in (METHODS, TASKS):
        assert set(registry._items) == set(registry.catalogue), f"{registry.package}/__init__.py CATALOGUE"


def test_a_class_that_disagrees_with_its_catalogue_entry_is_refused():
    from harness.registry import Registry

    class Impostor:
        name, description, bound = "kd", "not what the catalogue says", ""

    with pytest.raises(TypeError, match="CATALOGUE"):
        Registry("method", "methods").register(Impostor)

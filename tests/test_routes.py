"""Dataset routes (data/routes/): the registry matches what the CLI offers, a route registered
with one call is prepared end to end, an option a route does not take is refused in one line;
and the package's imports run one way (no circle, data/ never imports engine/)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from concutmix_cli.data import routes, staging
from concutmix_cli.data.longtail import read_manifest
from concutmix_cli.data.prepare import prepare
from concutmix_cli.data.prepared import load_prepared
from concutmix_cli.data.routes.base import SEED, Option, Route
from concutmix_cli.errors import UserError
from tests.conftest import REPO, one_error_line

PACKAGE = REPO / "concutmix_cli"


def _cli_prepare():
    """The click command behind `concutmix prepare`."""
    import typer.main

    from concutmix_cli.cli import app

    return typer.main.get_command(app).commands["prepare"]


# ----------------------------------------------------------------------------- the registry


def test_the_registry_names_every_dataset_the_cli_offers():
    (argument,) = [p for p in _cli_prepare().params if p.name == "dataset"]
    words = set(re.findall(r"[\w-]+", argument.help))
    offered = {w for w in words if w in routes.ROUTES or re.fullmatch(r"[a-z0-9]+-lt|inat\d+", w)}
    assert offered == set(routes.names())
    for name in routes.names():
        assert name in routes.route(name).names and routes.ROUTES[name] is routes.route(name)
    with pytest.raises(UserError, match="unknown dataset 'mnist-lt'; choose one of cifar10-lt, "):
        routes.route("mnist-lt")


def test_every_route_option_has_a_command_line_flag_and_one_declaration():
    flags = {flag for p in _cli_prepare().params for flag in (*p.opts, *p.secondary_opts)}
    declared = routes.options()
    assert [o.flag for o in declared if o.flag not in flags] == []
    assert len({o.name for o in declared}) == len(declared)
    for each in set(routes.ROUTES.values()):
        assert each.names and all(o in declared for o in each.options)


# ----------------------------------------------------------------------------- a new route

SHADE = Option("shade", "--shade", int, 128)


class FlatRoute(Route):
    """A route as a newcomer writes one: two classes of flat grey images, `shade` their level."""

    names = ("flat-lt",)
    options = (SEED, SHADE)

    def check(self, options):
        if not 0 <= options.shade <= 255:
            raise UserError(f"--shade must be between 0 and 255 (got {options.shade})")

    def stage(self, staging_dir, options):
        labels = np.array([0, 0, 0, 1], dtype=np.int64)
        images = np.full((len(labels), 8, 8, 3), options.shade, dtype=np.uint8)
        mean, std = staging.channel_stats(images)
        files = {"train.safetensors": staging.save_split(staging_dir, "train", images, labels)}
        return {"kind": "arrays", "num_classes": 2, "classes": ["dark", "light"],
                "image_size": 8, "mean": mean, "std": std, "train_counts": [3, 1],
                "val_counts": None, "test_counts": None, "train_indices": [0, 1, 2, 3],
                "splits": {"train": "train.safetensors", "val": None, "test": None},
                "files": files, "source": {"type": "flat"}, "imbalance": 3.0,
                "seed": options.seed}


@pytest.fixture
def flat(monkeypatch):
    monkeypatch.setattr(routes, "ROUTES", dict(routes.ROUTES))  # undone after the test
    routes.register(FlatRoute())


def test_a_route_registered_with_one_call_is_prepared_end_to_end(flat, tmp_path, monkeypatch):
    result = prepare("flat-lt", out=tmp_path / "flat", shade=200, seed=7)
    manifest = read_manifest(result.out)
    assert (manifest["dataset"], manifest["seed"], manifest["imbalance"]) == ("flat-lt", 7, 3.0)
    assert manifest["shot_groups"] == {"many": [], "medium": [], "few": [0, 1]}  # prepare's default
    data = load_prepared(result.out)
    assert data.train.images.unique().tolist() == [200] and data.train_counts == [3, 1]

    monkeypatch.chdir(tmp_path)  # the route's default folder, its own option at its default
    assert prepare("flat-lt").out == Path("data/flat-lt")
    assert load_prepared(tmp_path / "data/flat-lt").train.images.unique().tolist() == [128]

    with pytest.raises(UserError, match=r"^--shade must be between 0 and 255 \(got 300\)$"):
        prepare("flat-lt", out=tmp_path / "bad", shade=300)
    with pytest.raises(UserError) as refused:
        prepare("synthetic-lt", out=tmp_path / "bad", shade=3)
    assert str(refused.value) == "--shade is an option of prepare flat-lt, not of synthetic-lt"
    assert not (tmp_path / "bad").exists()


def test_a_second_declaration_of_an_option_or_a_name_is_refused(flat):
    class Clash(FlatRoute):
        names = ("clash-lt",)
        options = (Option("seed", "--seed", int, 1),)

    with pytest.raises(ValueError, match="'seed' is declared differently"):
        routes.register(Clash())
    with pytest.raises(ValueError, match="'flat-lt' has a route already"):
        routes.register(FlatRoute())


# ----------------------------------------------------------------------------- refused options


@pytest.mark.parametrize("dataset, given, message", [
    ("synthetic-lt", {"train_list": "train.txt"},
     "--train-list is an option of prepare imagenet-lt, prepare places-lt and prepare inat2018, "
     "not of synthetic-lt"),
    ("folder", {"root": "photos", "n_max": 5},
     "--n-max is an option of prepare cifar10-lt, prepare cifar100-lt and prepare synthetic-lt, "
     "not of folder"),
    ("cifar10-lt", {"classes": 5},
     "--classes is an option of prepare synthetic-lt, not of cifar10-lt"),
    ("imagenet-lt", {"root": ".", "train_list": "t.txt", "seed": 3},
     "--seed is an option of prepare cifar10-lt, prepare cifar100-lt, prepare synthetic-lt, "
     "prepare folder and prepare csv, not of imagenet-lt"),
    ("synthetic-lt", {"val_fraction": 0.0},
     "--val-fraction is an option of prepare folder and prepare csv, not of synthetic-lt"),
])
def test_an_option_the_route_does_not_take_is_refused_in_one_line(tmp_path, dataset, given,
                                                                  message):
    with pytest.raises(UserError) as refused:
        prepare(dataset, out=tmp_path / "out", **given)
    assert str(refused.value) == message
    assert sorted(tmp_path.iterdir()) == []


def test_the_command_line_refuses_it_too_but_not_an_option_left_at_its_default(cli, tmp_path):
    code, _, err = cli("prepare", "synthetic-lt", "--no-download", "--out", tmp_path / "d")
    assert code == 2
    one_error_line(err, "--no-download is an option of prepare cifar10-lt and prepare "
                        "cifar100-lt, not of synthetic-lt")
    # the CLI passes every option; --download (its default) and --imbalance 100 are not choices
    code, _, err = cli("prepare", "synthetic-lt", "--download", "--n-max", "20", "--imbalance",
                       "10", "--out", tmp_path / "d")
    assert code == 0, err
    with pytest.raises(TypeError, match="unexpected keyword argument 'n_maxx'"):
        prepare("synthetic-lt", out=tmp_path / "e", n_maxx=10)


# ----------------------------------------------------------------------------- imports


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports anywhere (in functions too), by the name
    imported: `from concutmix_cli.data import lists` is concutmix_cli.data.lists. A module-level
    `__getattr__` (PEP 562: concutmix_cli/__init__.py hands the API on at first use) re-exports
    and is not followed: `from concutmix_cli import __version__` does not import the API."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    body = [statement for statement in ast.parse(path.read_text(encoding="utf-8")).body
            if not (isinstance(statement, ast.FunctionDef) and statement.name == "__getattr__")]
    for node in (node for statement in body for node in ast.walk(statement)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # a name defined in a module: that module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    return {_module_name(f): _imports(f, modules) for f in files}


def test_the_package_has_no_import_circle():
    graph = _import_graph()
    assert "concutmix_cli.data.staging" in graph["concutmix_cli.data.own"]  # the walk sees imports
    circles: list[list[str]] = []
    state: dict[str, str] = {}  # "open" while on the path being walked, "done" after

    def walk(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                circles.append(path[path.index(imported):] + [imported])
            elif imported not in state:
                walk(imported, path + [imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert circles == []


def test_data_never_imports_the_engine():
    graph = _import_graph()
    wrong = {module: sorted(i for i in imported if i.startswith("concutmix_cli.engine"))
             for module, imported in graph.items() if module.startswith("concutmix_cli.data")}
    assert {module: found for module, found in wrong.items() if found} == {}

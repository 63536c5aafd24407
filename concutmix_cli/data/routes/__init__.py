"""The dataset routes of `concutmix prepare`, by dataset name.

A route is one family of datasets built the same way (base.py says what one provides), each in
its own module here. A new route is one module and one `register(...)` line below
(docs/own-data.md, "Adding a dataset route").
"""

from __future__ import annotations

from concutmix_cli.data.routes import cifar, lists, own, synthetic
from concutmix_cli.data.routes.base import Option, Route
from concutmix_cli.errors import UserError

ROUTES: dict[str, Route] = {}
"""Every dataset name `prepare` builds -> its route, in the order the help lists them."""

RESERVED = ("dataset", "out", "force", "callbacks")
"""Names of prepare's own parameters (and of `Options` fields), so no route option."""


def register(new: Route) -> Route:
    """Let `prepare` build each of the route's names with it. An option may be shared between
    routes only as one declaration (one type, default and flag: the API checks one model)."""
    declared = {option.name: option for option in options()}
    for option in new.options:
        if option.name in RESERVED:
            raise ValueError(f"route option '{option.name}' is a parameter of prepare itself")
        if declared.get(option.name, option) != option:
            raise ValueError(f"route option '{option.name}' is declared differently by another "
                             f"route; import its declaration from there (routes/base.py)")
    for name in new.names:
        if name in ROUTES:
            raise ValueError(f"dataset '{name}' has a route already")
        ROUTES[name] = new
    return new


def route(name: str) -> Route:
    """The route that builds dataset `name`."""
    if name not in ROUTES:
        raise UserError(f"unknown dataset '{name}'; choose one of {', '.join(ROUTES)}")
    return ROUTES[name]


def names() -> tuple[str, ...]:
    """Every dataset `prepare` builds (for choices and help)."""
    return tuple(ROUTES)


def options() -> list[Option]:
    """Every option of every route, once, in the order the routes declare them."""
    seen: dict[str, Option] = {}
    for each in ROUTES.values():
        for option in each.options:
            seen.setdefault(option.name, option)
    return list(seen.values())


def taking(option: Option) -> list[str]:
    """The datasets whose route accepts `option`."""
    return [name for name, each in ROUTES.items() if option in each.options]


register(cifar.CifarRoute())
register(synthetic.SyntheticRoute())
register(lists.ListRoute())
register(own.OwnRoute())

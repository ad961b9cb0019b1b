"""URL rules that build their URL builders on first use, not when they are added.

werkzeug compiles two URL builders (Python source through ``ast`` and ``compile``) for
every rule as it is added, for ``url_for``. The daemon has about a hundred rules and never
builds a URL from most of them, so that was ~20 ms of each start spent before the first
request could be answered (issue 17). Matching is unchanged: only the builders wait.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quart.routing import QuartRule
from quart_trio import QuartTrio


class LazyBuilderRule(QuartRule):
    """A ``QuartRule`` whose builders are compiled the first time each one is called.

    Contract: ``Rule.build`` (and so ``url_for``) returns what werkzeug's own builder
    returns; the compiled builder then replaces the placeholder on the rule, so it is
    compiled at most once per rule and kind (with and without unknown arguments).
    """

    def _compile_builder(self, append_unknown: bool = True) -> Callable[..., tuple[str, str]]:
        slot = "_build_unknown" if append_unknown else "_build"
        compile_real = super()._compile_builder

        def build_first(rule: LazyBuilderRule, **values: Any) -> tuple[str, str]:
            real = compile_real(append_unknown).__get__(rule, None)
            setattr(rule, slot, real)
            return real(**values)  # type: ignore[no-any-return]

        return build_first


class FarmApp(QuartTrio):
    """The daemon's app class: every rule it holds (the static one its constructor adds
    included) is a ``LazyBuilderRule``."""

    url_rule_class = LazyBuilderRule  # type: ignore[assignment]  # as quart declares its own

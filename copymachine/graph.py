"""The stage graph of a plan: what each stage waits for, what it leads to, what it needs."""

from __future__ import annotations

from copymachine.plan import Plan


def dependencies(plan: Plan) -> dict[str, set[str]]:
    """What each stage waits for: the stages whose outputs it reads and every gate (a check) planned before it."""
    names = {s.name for s in plan.stages}
    deps: dict[str, set[str]] = {}
    gates: list[str] = []
    for stage in plan.stages:
        d = {ref.producer for ref in stage.inputs.values() if ref.producer} | set(gates)
        deps[stage.name] = d & names
        if stage.gate:
            gates.append(stage.name)
    return deps


def ancestors(name: str, deps: dict[str, set[str]]) -> set[str]:
    """Every stage `name` needs, directly or through others."""
    seen: set[str] = set()
    todo = list(deps.get(name, ()))
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(deps.get(n, ()))
    return seen


def results(plan: Plan, deps: dict[str, set[str]]) -> dict[str, set[str]]:
    """For each stage, the end products (stages nothing depends on) it leads to."""
    dependents: dict[str, set[str]] = {s.name: set() for s in plan.stages}
    for name, d in deps.items():
        for dep in d:
            dependents[dep].add(name)
    reach: dict[str, set[str]] = {}
    for stage in reversed(plan.stages):
        below = dependents[stage.name]
        reach[stage.name] = set().union(*(reach[n] for n in below)) if below else {stage.name}
    return reach

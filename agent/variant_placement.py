"""The agent's side of memory-adaptive variants: :mod:`agent.variants`' rule applied to the cache
state a placement transaction read, the request rewritten for the variant placed, and the
background upgrade the keep-alive loop runs (into free memory only, never evicting)."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from agent import variants as rule
from agent.cachestate import parse_entries, policy_entries, used_bytes
from agent.keys import key, unslot
from agent.lifecycle import DRAINING

if TYPE_CHECKING:
    from agent.cachestate import CacheState
    from agent.decision import Decision, ModelFacts
    from agent.placement import Placement


def decide(
    placement: Placement,
    model: ModelFacts,
    alive: dict,
    devices: list[str],
    now: float,
    state: CacheState,
    admitting: bool,
    only_worker: str | None,
):
    """:func:`agent.decision.decide` for a function with variants (not for a request admitted from
    the admission queue: it waited for its own model): the rule picks the variant, the usual
    decision places it. A variant other than the best is marked ``served`` (placement
    commits it, :func:`served_request` rewrites the request for it)."""
    from agent.decision import ModelFacts, ModelTooLarge
    from agent.decision import decide as decide_plain

    plain = replace(model, variants=())

    def run(facts: ModelFacts):
        return decide_plain(placement, facts, alive, devices, now, state, admitting, only_worker)

    best_decision: list = []

    def victims():
        try:
            decision, policy = run(plain)
        except ModelTooLarge:
            return None
        best_decision.append((decision, policy))
        if decision.ticket is not None:  # its memory is pinned: it would wait
            return None
        device = decision.device
        gone = set(decision.evicted)
        facts = policy_entries(placement.r, device, state.entries[device], state.pins[device])
        return [e for e, s in facts if unslot(s) in gone]

    held = {m for es in state.entries.values() for m, _, doc in es if doc["state"] != DRAINING}
    free = max(state.caps[d] - used_bytes(state.entries[d]) for d in devices)
    requests = function_requests(placement.r, model.variants)
    cap = max(state.caps[d] for d in devices)
    chosen = rule.choose(model.variants, held, free, requests, victims, cap)
    if chosen.name == model.name:
        return best_decision[0] if best_decision else run(plain)
    facts = ModelFacts(chosen.name, chosen.bytes, chosen.load_s, chosen.exec_s)
    decision, policy = run(facts)
    if decision.ticket is not None:  # others wait for memory: the request waits as itself
        return best_decision[0] if best_decision else run(plain)
    decision.served = facts
    return decision, policy


def function_requests(conn, variants) -> int:
    """The function's requests so far, over all its variants, counting this one."""
    with conn.pipeline(transaction=False) as pipe:
        for v in variants:
            pipe.hget(key("stats", v.name), "requests")
        return 1 + sum(int(n or 0) for n in pipe.execute())


def variant_list(doc: dict[str, Any], facts_of_doc) -> list[rule.Variant]:
    """The function's variants with the facts placement accounts them with (``facts_of_doc``:
    a function document -> ModelFacts, e.g. the gateway's cached ``model_facts``)."""
    out = []
    for v in doc.get("variants") or []:
        f = facts_of_doc({"name": doc["name"], "model": v["model"], "file": v["file"]})
        out.append(rule.Variant(v["model"], f.bytes, f.load_s, f.exec_s, v["accuracy"], v["file"]))
    return out


def as_facts(name: str, facts: dict[str, Any], variants: list[dict[str, Any]]) -> ModelFacts:
    """A request's facts (``req["facts"]``, ``req["variants"]``) as ModelFacts: with
    variants, always the best one's (a request placed again chooses again)."""
    from agent.placement import ModelFacts

    if not variants:
        return ModelFacts(name, int(facts["bytes"]), float(facts["load_s"]), float(facts["exec_s"]))
    vs = tuple(rule.Variant(**v) for v in variants)
    return ModelFacts(vs[0].name, vs[0].bytes, vs[0].load_s, vs[0].exec_s, vs)


def with_variants(req: dict[str, Any], variants: list[rule.Variant]) -> dict[str, Any]:
    if variants:
        req["variants"] = [asdict(v) for v in variants]
    return req


def served_request(req: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """``req`` as its worker must see it: the model and file of the variant placed (the best
    one's when none was chosen: a request placed again may have been rewritten before)."""
    if not req.get("variants"):
        return req
    name = decision.served.name if decision.served else req["variants"][0]["name"]
    v = next(v for v in req["variants"] if v["name"] == name)
    facts = {**req["facts"], "bytes": v["bytes"], "load_s": v["load_s"], "exec_s": v["exec_s"]}
    return {**req, "model": v["name"], "file": v["file"], "facts": facts}


def upgrade(placement: Placement, functions: list[tuple[str, list[rule.Variant]]], now=None):
    """Load, into free memory only, the better variant :func:`agent.variants.upgrade_target`
    names for each function (``(name, variants)``) served smaller on a device; returns the
    ``(model, worker)`` loads queued. Nothing is evicted for it; a device with requests
    waiting for memory is left to them."""
    from agent.keepalive import _prewarm_one
    from agent.placement import ModelFacts

    now = now or time.time()
    r = placement.r
    alive = placement.members.alive()
    queued = []
    for device in sorted({w.device for w in alive.values()}):
        if r.zcard(key("waiting", device)):
            continue
        for _, variants in functions:
            entries = parse_entries(r.hgetall(key("entries", device)), alive)
            held = {m for m, _, doc in entries if doc["state"] != DRAINING}
            free = placement.members.cap(device) - used_bytes(entries)
            target = rule.upgrade_target(variants, held, free)
            if target is None:
                continue
            facts = ModelFacts(target.name, target.bytes, target.load_s, target.exec_s)
            worker = _prewarm_one(placement, device, facts, target.file, alive, now)
            if worker:
                r.hincrby(key("upgrades", device), target.name, 1)
                queued.append((target.name, worker))
    return queued

# duffy scheduler: Ansible callback plugin, written next to every playbook run by `duffy scheduler`
# (src/scheduler/playbook.rs) and enabled through ANSIBLE_CALLBACK_PLUGINS/ANSIBLE_CALLBACKS_ENABLED.
# It records the value of the last successful `set_fact` that set `duffy_out` — the result
# contract of upstream's provision/deprovision playbooks (compat spec §8.4) — into the JSON file
# named by $DUFFY_OUT_FILE. Unlike upstream, the FQCN forms of set_fact count too (bug 10).
from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: duffy_out
type: aggregate
short_description: write the last duffy_out set by set_fact to $DUFFY_OUT_FILE
description:
  - Used by duffy's scheduler to read the results of provision and deprovision playbooks.
"""

ACTIONS = frozenset(("set_fact", "ansible.builtin.set_fact", "ansible.legacy.set_fact"))


def _plain(value):
    """Tagged/unsafe Ansible values as plain JSON-able Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "duffy_out"
    CALLBACK_NEEDS_ENABLED = True

    def _facts(self, result):
        res = getattr(result, "result", None)
        if not isinstance(res, dict):
            res = getattr(result, "_result", None) or {}
        facts = res.get("ansible_facts") or {}
        if "duffy_out" in facts:
            return facts
        for item in reversed(res.get("results") or []):
            if isinstance(item, dict) and "duffy_out" in (item.get("ansible_facts") or {}):
                return item["ansible_facts"]
        return None

    def v2_runner_on_ok(self, result, *args, **kwargs):
        task = getattr(result, "task", None) or getattr(result, "_task", None)
        if getattr(task, "action", None) not in ACTIONS:
            return
        facts = self._facts(result)
        path = os.environ.get("DUFFY_OUT_FILE")
        if facts is None or not path:
            return
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(_plain(facts["duffy_out"]), f)
        os.replace(tmp, path)

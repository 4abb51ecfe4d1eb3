"""``status numbered`` and ``status verbose`` (and ``list numbered|verbose``):
the rule table shaped as ufw prints it, for eyes and scripts used to
``ufw status``. One line per pyxdp rule: a rule for both families is one
line (ufw prints a second, ``(v6)``, line for its IPv6 copy)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..layout import Verdict
    from ..model.rules import Addr, PortRanges, Rule


def _where(addr: Addr, ports: PortRanges, app: str | None, proto: str, bare: bool = False) -> str:
    from ..model.rules import ANY, format_ports

    text = "Anywhere" if addr == ANY else str(addr)
    port = app or (format_ports(ports) if ports else "")
    if port and not app and proto != "any":
        port += f"/{proto}"
    if port:
        text = port if text == "Anywhere" else f"{text} {port}"
    elif bare and proto != "any" and addr == ANY:
        text += f"/{proto}"
    return text


def rule_columns(rule: Rule, verbose: bool) -> tuple[str, str, str]:
    """(To, Action, From) as ufw shows a rule."""
    to = _where(rule.dst, rule.dport, rule.dapp, rule.proto, bare=not rule.sport)
    frm = _where(rule.src, rule.sport, rule.sapp, rule.proto)
    if rule.proto != "any" and f"/{rule.proto}" not in to + frm and not (rule.dapp or rule.sapp):
        to += f" ({rule.proto})"
    if rule.iface:
        to += f" on {rule.iface}"
    action = rule.action.name.upper() + (" IN" if verbose else "")
    return to, action, frm


def ufw_status(active: bool, policy: Verdict, rules: Sequence[Rule], form: str | None) -> str:
    """``form``: None (plain), "numbered" or "verbose"."""
    lines = [f"Status: {'active' if active else 'inactive'}"]
    if form == "verbose":
        pol = "allow" if policy.label == "pass" else "deny"
        lines += ["Logging: off", f"Default: {pol} (incoming), allow (outgoing), {pol} (routed)",
                  "New profiles: skip"]
    if rules:
        pad = "     " if form == "numbered" else ""
        lines += ["", f"{pad}{'To':<26} {'Action':<12}From", f"{pad}{'--':<26} {'------':<12}----"]
        for i, rule in enumerate(rules, 1):
            to, action, frm = rule_columns(rule, form is not None)
            num = f"[{i:2}] " if form == "numbered" else ""
            note = f"{'':<{max(0, 26 - len(frm))}} # {rule.comment}" if rule.comment else ""
            lines.append(f"{num}{to:<26} {action:<12}{frm}{note}".rstrip())
    return "\n".join(lines)

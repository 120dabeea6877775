"""The rule sets capsa installs (their order is what makes networks unable to reach each other)."""

from __future__ import annotations

from capsa.networks._firewall import Firewall, RuleSet, _tag_of


def test_bridge_rules_accept_inside_guard_inbound_and_masquerade_outbound() -> None:
    rules = RuleSet.for_bridge("capsa0", "10.204.0.0/24")
    drop, intra = rules.forward_top
    assert drop[:2] == ["-o", "capsa0"] and drop[-2:] == ["-j", "DROP"] and "!" in drop
    assert intra == ["-i", "capsa0", "-o", "capsa0", "-j", "ACCEPT"]  # inserted last, so evaluated first
    assert rules.nat == [["-s", "10.204.0.0/24", "!", "-o", "capsa0", "-j", "MASQUERADE"]]
    assert rules.count() == (4, 1)


def test_isolated_rules_guard_the_job_and_masquerade_its_subnet() -> None:
    rules = RuleSet.for_isolated("capv0123456789", "10.203.0.4/30")
    assert rules.forward_top == [["-o", "capv0123456789", "-m", "conntrack", "!", "--ctstate",
                                  "RELATED,ESTABLISHED", "-j", "DROP"]]
    assert ["-i", "capv0123456789", "-j", "ACCEPT"] in rules.forward_bottom
    assert rules.nat == [["-s", "10.203.0.4/30", "!", "-o", "capv0123456789", "-j", "MASQUERADE"]]


def test_tags_name_instance_kind_and_owner_and_parse_back_from_iptables_output() -> None:
    fw = Firewall("iptables", "CAPSA", "ab12cd34")
    tag = fw.tag("job", "j-1.x")
    assert tag == "capsa:ab12cd34:job:j-1.x"
    line = f'-A CAPSA-FORWARD -i capv1 -m comment --comment "{tag}" -j ACCEPT'
    assert _tag_of(line) == tag
    assert _tag_of(f"-A CAPSA-FORWARD -m comment --comment {tag} -j ACCEPT") == tag
    assert _tag_of("-A CAPSA-FORWARD -j ACCEPT") is None
    assert (fw.forward, fw.postrouting, fw.restore) == ("CAPSA-FORWARD", "CAPSA-POSTROUTING", "iptables-restore")

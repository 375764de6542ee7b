//! Flattening of region memberships and rules into one decision table ([`Entry`]) per
//! prefix, so the kernel needs one LPM lookup and one array lookup per decision.
//!
//! Each prefix's table holds its own protocol/port rules (in precedence order) and, when it
//! has no portless decision of its own, those of the nearest covering prefix, ending with a
//! default: the prefix's own portless decision, else the covering prefix's. Identical tables
//! are shared, so a region with a million prefixes and no rules costs one entry.
use std::collections::HashMap;

use egressd_common::{
    Entry, MAX_ENTRIES, MAX_PORT_RULES, PortRule, REGION_UNKNOWN, RULE_DEFAULT, action,
};
use ipnetwork::IpNetwork;

use super::Policy;
use crate::config::{Action, Rule, Target};

/// Precedence of a candidate at one prefix: (specificity, rank, preference); larger wins.
/// Specificity: ports 2, protocol only 1, neither 0. Rank: enforcing deny 2, auditing deny
/// 1, allow 0. Preference: earlier rules (by position in the files, not by id) first, region
/// membership and default last.
type Key = (u8, u8, u32);

/// `order`: the rule's 1-based position in the files; 0 for region membership and default.
fn key(specificity: u8, action: Action, audit: bool, order: u32) -> Key {
    let rank = match (action, audit) {
        (Action::Deny, false) => 2,
        (Action::Deny, true) => 1,
        (Action::Allow, _) => 0,
    };
    let pref = if order == 0 { 0 } else { u32::MAX - order };
    (specificity, rank, pref)
}

fn code(action: Action) -> u8 {
    match action {
        Action::Allow => action::ALLOW,
        Action::Deny => action::DENY,
    }
}

#[derive(Clone, Copy)]
struct Portless {
    key: Key,
    action: u8,
    audit: u8,
    rule: u32,
}

#[derive(Default)]
struct Node {
    region: Option<u32>,
    portless: Option<Portless>,
    port: Vec<(Key, PortRule)>,
}

/// Port rules kept per prefix: one more than the kernel holds, enough to know the limit is
/// exceeded; the rest are only counted, so memory stays linear in the input.
const KEEP: usize = MAX_PORT_RULES + 1;

impl Node {
    fn offer(&mut self, action: Action, audit: bool, rule: u32, order: u32) {
        let c = Portless {
            key: key(0, action, audit, order),
            action: code(action),
            audit: u8::from(audit),
            rule,
        };
        if self.portless.is_none_or(|p| c.key > p.key) {
            self.portless = Some(c);
        }
    }
}

/// What a prefix resolves to, inherited by the prefixes it contains.
#[derive(Clone)]
struct Resolved {
    region: u32,
    /// The first [`KEEP`] port rules in precedence order.
    rules: Vec<PortRule>,
    /// How many port rules apply in all (more than `rules.len()` only past the limit).
    count: usize,
    default: Portless,
}

/// Fills `p.entries`, `p.lpm_v4`, `p.lpm_v6` (merged, see [`super::merge`]),
/// `p.lpm_unmerged` and `p.problems` from the other fields.
pub(super) fn build(p: &mut Policy) {
    if p.rules.is_empty() {
        // Entry id == region id: the region prefixes as they are, merged.
        build_regions_only(p);
        p.lpm_unmerged = [p.v4.len(), p.v6.len()];
        p.lpm_v4 = super::merge::merge_v4(&p.v4);
        p.lpm_v6 = super::merge::merge_v6(&p.v6);
        return;
    }
    build_with_rules(p);
    p.lpm_unmerged = [p.lpm_v4.len(), p.lpm_v6.len()];
    p.lpm_v4 = super::merge::merge_v4(&p.lpm_v4);
    p.lpm_v6 = super::merge::merge_v6(&p.lpm_v6);
}

fn build_with_rules(p: &mut Policy) {
    let mut nodes: HashMap<IpNetwork, Node> = HashMap::with_capacity(p.v4.len() + p.v6.len());
    let members =
        p.v4.iter()
            .map(|(n, id)| (IpNetwork::V4(*n), *id))
            .chain(p.v6.iter().map(|(n, id)| (IpNetwork::V6(*n), *id)));
    for (net, id) in members {
        let allow = p.allowed.get(id as usize).copied().unwrap_or(false);
        let action = if allow { Action::Allow } else { Action::Deny };
        let audit = p.audit_of(None, Some(id));
        let node = nodes.entry(net).or_default();
        node.region = Some(id);
        node.offer(action, audit, 0, 0);
    }
    // A port rule naming a region lands on every prefix of the region. Past the limit the
    // policy is refused anyway, so only the first KEEP such rules per region are copied and
    // the others counted: rules x prefixes would be quadratic in time and memory.
    let ids: HashMap<&str, u32> = (0u32..)
        .zip(&p.regions)
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut members: Vec<Vec<IpNetwork>> = vec![Vec::new(); p.regions.len()];
    for (n, id) in &p.v4 {
        members[*id as usize].push(IpNetwork::V4(*n));
    }
    for (n, id) in &p.v6 {
        members[*id as usize].push(IpNetwork::V6(*n));
    }
    let mut copied = vec![0usize; p.regions.len()];
    let mut uncopied = vec![0usize; p.regions.len()];
    for (order, r) in (1u32..).zip(&p.rules) {
        let mut apply = |net: IpNetwork, audit: bool| {
            let node = nodes.entry(net).or_default();
            if r.is_specific() {
                let (lo, hi) = r.ports.unwrap_or((0, u16::MAX));
                let rule = PortRule {
                    port_lo: lo,
                    port_hi: hi,
                    protocol: r.protocol.unwrap_or(0),
                    action: code(r.action),
                    audit: u8::from(audit),
                    any_protocol: u8::from(r.protocol.is_none()),
                    rule: r.id,
                };
                node.port
                    .push((key(r.specificity(), r.action, audit, order), rule));
            } else {
                node.offer(r.action, audit, r.id, order);
            }
        };
        for t in &r.targets {
            match t {
                Target::Prefix(net) => apply(*net, p.audit_of(r.mode, None)),
                Target::Region(name) => {
                    let Some(&id) = ids.get(name.as_str()) else {
                        continue;
                    };
                    let i = id as usize;
                    if r.is_specific() {
                        if copied[i] >= KEEP {
                            uncopied[i] += 1;
                            continue;
                        }
                        copied[i] += 1;
                    }
                    let audit = p.audit_of(r.mode, Some(id));
                    for n in &members[i] {
                        apply(*n, audit);
                    }
                }
            }
        }
    }

    let default_audit = p.audit_of(None, None);
    let root = Resolved {
        region: REGION_UNKNOWN,
        rules: Vec::new(),
        count: 0,
        default: Portless {
            key: key(0, p.default, default_audit, 0),
            action: code(p.default),
            audit: u8::from(default_audit),
            rule: RULE_DEFAULT,
        },
    };
    let mut table = Table::default();
    table.id(entry(&root, &p.rules, &mut p.problems, None));

    let mut nets: Vec<IpNetwork> = nodes.keys().copied().collect();
    nets.sort_unstable_by_key(|n| match n {
        IpNetwork::V4(v) => (0u8, u128::from(u32::from(v.network())), v.prefix()),
        IpNetwork::V6(v) => (1u8, u128::from(v.network()), v.prefix()),
    });
    let mut stack: Vec<(IpNetwork, Resolved)> = Vec::new();
    let (mut lpm_v4, mut lpm_v6) = (Vec::new(), Vec::new());
    for net in nets {
        while let Some((top, _)) = stack.last() {
            let same_family = top.is_ipv4() == net.is_ipv4();
            if same_family && top.prefix() <= net.prefix() && top.contains(net.network()) {
                break;
            }
            stack.pop();
        }
        let parent = stack.last().map_or(&root, |(_, r)| r);
        let Some(node) = nodes.get_mut(&net) else {
            continue;
        };
        node.port.sort_by_key(|r| std::cmp::Reverse(r.0));
        let mut rules: Vec<PortRule> = node.port.iter().take(KEEP).map(|(_, r)| *r).collect();
        // Region rules reach only the region's own prefixes (a prefix is in one region).
        let mut count = node.port.len() + node.region.map_or(0, |id| uncopied[id as usize]);
        let default = match node.portless {
            Some(own) => own,
            None => {
                let room = KEEP.saturating_sub(rules.len());
                rules.extend(parent.rules.iter().take(room));
                count += parent.count;
                parent.default
            }
        };
        let resolved = Resolved {
            region: node.region.unwrap_or(parent.region),
            rules,
            count,
            default,
        };
        let id = table.id(entry(&resolved, &p.rules, &mut p.problems, Some(net)));
        match net {
            IpNetwork::V4(v) => lpm_v4.push((v, id)),
            IpNetwork::V6(v) => lpm_v6.push((v, id)),
        }
        stack.push((net, resolved));
    }
    if table.entries.len() > MAX_ENTRIES as usize {
        p.problems.push(format!(
            "the policy needs {} distinct decision tables, the kernel map holds {MAX_ENTRIES}; \
             use fewer distinct rule combinations",
            table.entries.len()
        ));
    }
    p.entries = table.entries;
    p.lpm_v4 = lpm_v4;
    p.lpm_v6 = lpm_v6;
}

/// Without rules every prefix has its own portless decision (its region's), so its table
/// depends on its region alone: one entry per region, no tree walk.
fn build_regions_only(p: &mut Policy) {
    let default_audit = p.audit_of(None, None);
    let mut entries = vec![Entry {
        region: REGION_UNKNOWN,
        default_rule: RULE_DEFAULT,
        default_action: code(p.default),
        default_audit: u8::from(default_audit),
        ..Default::default()
    }];
    for id in 1..p.regions.len() {
        let id = id as u32;
        let allow = p.allowed.get(id as usize).copied().unwrap_or(false);
        entries.push(Entry {
            region: id,
            default_action: code(if allow { Action::Allow } else { Action::Deny }),
            default_audit: u8::from(p.audit_of(None, Some(id))),
            ..Default::default()
        });
    }
    // Entry id == region id (an id no region of this policy has gets an entry nothing
    // points to); `build` fills the LPM contents from the region prefixes.
    p.entries = entries;
}

/// Rules a too-long port rule list names, at most.
const NAMED: usize = 4;

fn entry(
    r: &Resolved,
    rules: &[Rule],
    problems: &mut Vec<String>,
    net: Option<IpNetwork>,
) -> Entry {
    if r.count > MAX_PORT_RULES && problems.len() < 10 {
        // Where to look: the first rules in precedence order, with file and line.
        let named: Vec<String> = r
            .rules
            .iter()
            .filter_map(|pr| rules.iter().find(|x| x.id == pr.rule))
            .take(NAMED)
            .map(|x| {
                if x.name.contains(&x.origin) {
                    x.name.clone()
                } else {
                    format!("`{}` ({})", x.name, x.origin)
                }
            })
            .collect();
        let more = r.count.saturating_sub(named.len());
        problems.push(format!(
            "{} port rules apply to {} (its own and those of covering prefixes), at most \
             {MAX_PORT_RULES} are supported: {}{}",
            r.count,
            net.map_or_else(|| "the default".to_owned(), |n| n.to_string()),
            named.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    let mut e = Entry {
        region: r.region,
        default_rule: r.default.rule,
        default_action: r.default.action,
        default_audit: r.default.audit,
        n_rules: u8::try_from(r.rules.len().min(MAX_PORT_RULES)).unwrap_or(0),
        ..Default::default()
    };
    for (slot, rule) in e.rules.iter_mut().zip(&r.rules) {
        *slot = *rule;
    }
    e
}

/// Deduplicating entry table.
#[derive(Default)]
struct Table {
    entries: Vec<Entry>,
    ids: HashMap<Entry, u32>,
}

impl Table {
    fn id(&mut self, e: Entry) -> u32 {
        if let Some(id) = self.ids.get(&e) {
            return *id;
        }
        let id = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
        self.entries.push(e);
        self.ids.insert(e, id);
        id
    }
}

//! The planner: from the kernel's current rule set and the desired state to the smallest
//! `iptables-restore --noflush` input that makes ours equal to the desired state, touching
//! nothing else.
//!
//! - Chains we own (`<wrap>-<name>`) are compared rule by rule; only the changed run is
//!   deleted and inserted by index (or the chain rewritten when that is shorter).
//! - In builtin and shared chains only rules with our marker are ours; they are deleted by
//!   value and added at the top (`-I 1`) or the bottom (`-A`), so foreign rules keep their
//!   order and bytes.
//! - Stale chains of ours are flushed and deleted after every reference of ours is gone; an
//!   unwrapped chain we released is deleted once it is empty and unreferenced.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::kernel::{KernelChain, KernelRule, KernelState, KernelTable, Op};
use crate::model::{ChainKind, DesiredRule, DesiredTable, IptablesModel, Origin};
use crate::names::{Family, Table, WrapName};

/// One restore line and the caller's rule it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedOp {
    /// The operation.
    pub op: Op,
    /// The rule the caller wrote, for error messages.
    pub origin: Option<Arc<Origin>>,
}

/// The operations for one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePlan {
    /// The table.
    pub table: Table,
    /// Its operations, in order.
    pub ops: Vec<PlannedOp>,
}

/// The plan for one family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Tables with changes, in order.
    pub tables: Vec<TablePlan>,
    /// Things the planner chose not to do, for the operator (e.g. a stale chain kept because a
    /// foreign rule still jumps to it).
    pub notes: Vec<String>,
}

/// What one line of the rendered restore input is (its text is that line of the input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineInfo {
    /// The table the line is in.
    pub table: Table,
    /// The caller's rule behind it.
    pub origin: Option<Arc<Origin>>,
}

impl Plan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(|t| t.ops.is_empty())
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.tables.iter().map(|t| t.ops.len()).sum()
    }

    /// Reorders the plan so that its restore input ([`Plan::render`]) begins with `prefix`:
    /// the start of one table's block, written before the plan was made (a one-shot apply
    /// streams a table into `iptables-restore` while its model is still being built), as
    /// `*table`, declarations, then `-A` lines, each ending in a newline. That table's block
    /// moves first (blocks commit one by one and independently), and in it the operations the
    /// prefix wrote come first, in its order, then the others in the plan's order.
    ///
    /// That does what the plan does only if the prefix declares exactly the chains the plan
    /// creates in that table, appends only to those, in each exactly the plan's first rules in
    /// their order, and the plan does nothing to those chains but declare and append. Anything
    /// else leaves the plan as it was and answers `false`.
    pub fn lead_with(&mut self, prefix: &str) -> bool {
        use std::collections::{HashMap, VecDeque};
        let Some(body) = prefix.strip_suffix('\n') else {
            return false;
        };
        let mut lines = body.split('\n');
        let Some(head) = lines.next().and_then(|l| l.strip_prefix('*')) else {
            return false;
        };
        let Some(at) = self
            .tables
            .iter()
            .position(|t| t.table.as_str() == head && !t.ops.is_empty())
        else {
            return false;
        };
        let ops = &self.tables[at].ops;
        let created: HashMap<&str, usize> = ops
            .iter()
            .enumerate()
            .filter_map(|(i, o)| match &o.op {
                Op::Declare(c) => Some((c.as_str(), i)),
                _ => None,
            })
            .collect();
        let mut appends: HashMap<&str, VecDeque<usize>> = HashMap::new();
        for (i, o) in ops.iter().enumerate() {
            match &o.op {
                Op::Declare(_) => {}
                Op::Append(c, _) => {
                    if created.contains_key(c.as_str()) {
                        appends.entry(c.as_str()).or_default().push_back(i);
                    }
                }
                Op::Insert(c, ..)
                | Op::DeleteAt(c, _)
                | Op::DeleteSpec(c, _)
                | Op::Flush(c)
                | Op::DeleteChain(c) => {
                    if created.contains_key(c.as_str()) {
                        return false;
                    }
                }
            }
        }
        let mut taken = vec![false; ops.len()];
        let mut order = Vec::new();
        let mut declared = 0;
        for line in lines {
            if let Some(decl) = line.strip_prefix(':') {
                let Some(&i) = decl
                    .strip_suffix(" - [0:0]")
                    .and_then(|name| created.get(name))
                else {
                    return false;
                };
                if taken[i] || declared < order.len() {
                    // Declared twice, or after an append.
                    return false;
                }
                declared += 1;
                taken[i] = true;
                order.push(i);
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
                if !created.get(chain).is_some_and(|&d| taken[d]) {
                    return false;
                }
                let Some(i) = appends.get_mut(chain).and_then(VecDeque::pop_front) else {
                    return false;
                };
                if !matches!(&ops[i].op, Op::Append(_, s) if s == spec) {
                    return false;
                }
                taken[i] = true;
                order.push(i);
            } else {
                return false;
            }
        }
        if declared != created.len() {
            return false;
        }
        let mut t = self.tables.remove(at);
        let mut old: Vec<Option<PlannedOp>> =
            std::mem::take(&mut t.ops).into_iter().map(Some).collect();
        t.ops = order.iter().filter_map(|&i| old[i].take()).collect();
        t.ops.extend(old.into_iter().flatten());
        self.tables.insert(0, t);
        true
    }

    /// The restore input (`*table` ... `COMMIT` per changed table) and a map from each line
    /// (index = line number - 1) to what it does.
    pub fn render(&self) -> (String, Vec<LineInfo>) {
        let mut text = String::new();
        let mut lines = Vec::new();
        for t in self.tables.iter().filter(|t| !t.ops.is_empty()) {
            text.push('*');
            text.push_str(t.table.as_str());
            text.push('\n');
            lines.push(LineInfo {
                table: t.table,
                origin: None,
            });
            for op in &t.ops {
                op.op.render_into(&mut text);
                text.push('\n');
                lines.push(LineInfo {
                    table: t.table,
                    origin: op.origin.clone(),
                });
            }
            text.push_str("COMMIT\n");
            lines.push(LineInfo {
                table: t.table,
                origin: None,
            });
        }
        (text, lines)
    }

    /// Applies the plan to a copy of the state it was made from (the state after a successful
    /// restore).
    pub fn apply_to(&self, state: &mut KernelState) -> Result<(), String> {
        for t in &self.tables {
            state.apply(t.table, t.ops.iter().map(|o| &o.op))?;
        }
        Ok(())
    }
}

/// Which chains to look at, per table; `None` means everything (a full resync).
pub type Scope = BTreeMap<Table, BTreeSet<String>>;

/// Whether the kernel chain `name` is ours: `<wrap>-<rest>`, and not the chain of a longer wrap
/// name seen in the kernel (`a` does not own `a-b-x` when wrap `a-b` exists).
pub fn owns_chain(wrap: &WrapName, wraps_seen: &BTreeSet<String>, name: &str) -> bool {
    wrap.strip(name).is_some()
        && !wraps_seen.iter().any(|o| {
            o.len() > wrap.as_str().len()
                && wrap.strip(o).is_some()
                && name
                    .strip_prefix(o.as_str())
                    .is_some_and(|r| r.starts_with('-'))
        })
}

/// Whether a plan creates `name` (of `kind`, in `table`) when the kernel lacks it: our own
/// chains and declared shared chains, never a builtin or someone else's.
fn created_when_absent(table: Table, name: &str, kind: ChainKind) -> bool {
    match kind {
        ChainKind::Own => true,
        ChainKind::Shared => !table.is_builtin(name),
        ChainKind::Foreign => false,
    }
}

/// The chains of `table` that a full plan ([`plan_family`] without a scope) from `current` to
/// `model` declares, in its order: known as soon as the model holds its chains, before any of
/// its rules.
pub fn created_chains(
    current: &KernelState,
    model: &IptablesModel,
    family: Family,
    table: Table,
) -> Vec<String> {
    let cur = current.table(table);
    model.table(family, table).map_or_else(Vec::new, |want| {
        want.chains
            .iter()
            .filter(|(name, dc)| {
                cur.chain(name).is_none() && created_when_absent(table, name, dc.kind)
            })
            .map(|(name, _)| name.clone())
            .collect()
    })
}

/// Plans one family. With a scope, only the named chains are compared (the incremental path);
/// without, every table and chain (start-up, after a failure, drift repair).
pub fn plan_family(
    current: &KernelState,
    model: &IptablesModel,
    family: Family,
    scope: Option<&Scope>,
) -> Plan {
    let wrap = model.wrap();
    let empty = DesiredTable::default();
    let mut tables: BTreeSet<Table> = model.tables_of(family).into_iter().collect();
    if scope.is_none() {
        tables.extend(current.tables.keys().copied());
    }
    let mut plan = Plan::default();
    for table in tables {
        let chain_scope = match scope {
            Some(s) => match s.get(&table) {
                Some(c) => Some(c),
                None => continue,
            },
            None => None,
        };
        let want = model.table(family, table).unwrap_or(&empty);
        let ops = plan_table(
            table,
            current.table(table),
            want,
            wrap,
            &current.wraps,
            chain_scope,
            &mut plan.notes,
        );
        if !ops.is_empty() {
            plan.tables.push(TablePlan { table, ops });
        }
    }
    plan
}

fn same(wrap: &WrapName, k: &KernelRule, d: &DesiredRule) -> bool {
    match &k.marker {
        Some(m) if m.wrap == wrap.as_str() => d.marked && m.hash == d.hash,
        _ => !d.marked && k.spec == d.spec,
    }
}

fn add(chain: &str, d: &DesiredRule, pos: Option<usize>) -> PlannedOp {
    let op = match pos {
        Some(p) => Op::Insert(chain.to_owned(), p, d.spec.clone()),
        None => Op::Append(chain.to_owned(), d.spec.clone()),
    };
    PlannedOp {
        op,
        origin: Some(d.origin.clone()),
    }
}

fn bare(op: Op) -> PlannedOp {
    PlannedOp { op, origin: None }
}

/// Lengths of the common prefix and (non-overlapping) common suffix of `cur` and `want`.
fn common_ends<W>(
    cur: &[KernelRule],
    want: &[W],
    eq: &dyn Fn(&KernelRule, &W) -> bool,
) -> (usize, usize) {
    let p = cur.iter().zip(want).take_while(|(k, w)| eq(k, w)).count();
    let max_s = cur.len().min(want.len()) - p;
    let s = cur
        .iter()
        .rev()
        .zip(want.iter().rev())
        .take(max_s)
        .take_while(|(k, w)| eq(k, w))
        .count();
    (p, s)
}

/// Replaces `cur` (rules `base+1 ..` of the chain) by `want`, trimming the common prefix and
/// suffix; by index. `at_end` says whether `cur` reaches the end of the chain (then new rules
/// are appended).
#[allow(clippy::too_many_arguments)]
fn edit_run<W>(
    chain: &str,
    cur: &[KernelRule],
    base: usize,
    want: &[W],
    at_end: bool,
    eq: &dyn Fn(&KernelRule, &W) -> bool,
    op_for: &dyn Fn(&W, Option<usize>) -> PlannedOp,
    out: &mut Vec<PlannedOp>,
) {
    let (p, s) = common_ends(cur, want, eq);
    let old_mid = cur.len() - p - s;
    let new_mid = &want[p..want.len() - s];
    for _ in 0..old_mid {
        out.push(bare(Op::DeleteAt(chain.to_owned(), base + p + 1)));
    }
    for (j, w) in new_mid.iter().enumerate() {
        let pos = (!(at_end && s == 0)).then_some(base + p + 1 + j);
        out.push(op_for(w, pos));
    }
}

#[allow(clippy::too_many_arguments)]
fn plan_table(
    table: Table,
    cur: &KernelTable,
    want: &DesiredTable,
    wrap: &WrapName,
    wraps_seen: &BTreeSet<String>,
    scope: Option<&BTreeSet<String>>,
    notes: &mut Vec<String>,
) -> Vec<PlannedOp> {
    let in_scope = |name: &str| scope.is_none_or(|s| s.contains(name));
    let mut decl = Vec::new();
    let mut body = Vec::new();
    // Reference counts that change with our rule edits, to know which chains become unused.
    let mut ref_delta: BTreeMap<String, isize> = BTreeMap::new();
    let mut emptied: BTreeSet<String> = BTreeSet::new();
    let eq = |k: &KernelRule, d: &&DesiredRule| same(wrap, k, d);

    for (name, dc) in want.chains.iter().filter(|(n, _)| in_scope(n)) {
        let kc = cur.chain(name);
        let kernel_rules: &[KernelRule] = kc.map_or(&[], |c| &c.rules);
        match dc.kind {
            ChainKind::Own => {
                if kc.is_none() && created_when_absent(table, name, dc.kind) {
                    decl.push(bare(Op::Declare(name.clone())));
                }
                let desired: Vec<&DesiredRule> = dc.rules().collect();
                let p = kernel_rules
                    .iter()
                    .zip(&desired)
                    .take_while(|(k, d)| eq(k, d))
                    .count();
                let changed = kernel_rules.len() + desired.len() - 2 * p;
                if changed > desired.len() + 1 && kernel_rules.len() > p {
                    // Rewriting the chain is shorter than editing it.
                    body.push(bare(Op::Flush(name.clone())));
                    body.extend(desired.iter().map(|d| add(name, d, None)));
                    for k in kernel_rules {
                        count(&mut ref_delta, k.target.as_deref(), -1);
                    }
                } else {
                    edit_run(
                        name,
                        kernel_rules,
                        0,
                        &desired,
                        true,
                        &eq,
                        &|d, pos| add(name, d, pos),
                        &mut body,
                    );
                    track_run(kernel_rules, &desired, &eq, &mut ref_delta);
                }
            }
            ChainKind::Shared | ChainKind::Foreign => {
                if kc.is_none() && created_when_absent(table, name, dc.kind) {
                    decl.push(bare(Op::Declare(name.clone())));
                }
                plan_shared(
                    name,
                    kernel_rules,
                    dc.top.as_slice(),
                    dc.bottom.as_slice(),
                    wrap,
                    &mut body,
                    &mut ref_delta,
                );
            }
        }
    }

    // Kernel chains that are no longer desired.
    let mut stale_own = Vec::new();
    for kc in cur
        .chains()
        .iter()
        .filter(|c| in_scope(&c.name) && !want.chains.contains_key(&c.name))
    {
        if owns_chain(wrap, wraps_seen, &kc.name) {
            stale_own.push(kc);
        } else {
            let mut deleted = false;
            for k in kc.rules.iter().filter(|k| k.is_marked_by(wrap.as_str())) {
                body.push(bare(Op::DeleteSpec(kc.name.clone(), k.spec.clone())));
                count(&mut ref_delta, k.target.as_deref(), -1);
                deleted = true;
            }
            if deleted {
                emptied.insert(kc.name.clone());
            }
        }
    }
    let stale_names: BTreeSet<&str> = stale_own.iter().map(|c| c.name.as_str()).collect();
    let mut tail_flush = Vec::new();
    let mut tail_delete = Vec::new();
    for kc in &stale_own {
        if !kc.rules.is_empty() {
            tail_flush.push(bare(Op::Flush(kc.name.clone())));
            for k in &kc.rules {
                count(&mut ref_delta, k.target.as_deref(), -1);
            }
        }
    }
    let refs_after = |name: &str, delta: &BTreeMap<String, isize>| {
        cur.references(name) as isize + delta.get(name).copied().unwrap_or(0)
    };
    for kc in &stale_own {
        if refs_after(&kc.name, &ref_delta) > 0 {
            let from: Vec<&str> = cur
                .chains()
                .iter()
                .filter(|c| !stale_names.contains(c.name.as_str()))
                .filter(|c| {
                    c.rules.iter().any(|r| {
                        r.target.as_deref() == Some(&kc.name) && !r.is_marked_by(wrap.as_str())
                    })
                })
                .map(|c| c.name.as_str())
                .collect();
            notes.push(format!(
                "{table}: kept chain {} (emptied): still referenced by rules in {}",
                kc.name,
                from.join(", ")
            ));
        } else {
            tail_delete.push(bare(Op::DeleteChain(kc.name.clone())));
        }
    }
    // Released and emptied shared chains: deleted when unused.
    for name in want
        .release
        .iter()
        .filter(|n| in_scope(n))
        .chain(emptied.iter())
    {
        if want.chains.contains_key(name)
            || table.is_builtin(name)
            || tail_delete
                .iter()
                .any(|o| o.op == Op::DeleteChain(name.clone()))
        {
            continue;
        }
        let Some(kc) = cur.chain(name) else { continue };
        let ours_deleted = body
            .iter()
            .filter(|o| matches!(&o.op, Op::DeleteSpec(c, _) if c == name))
            .count();
        if kc.rules.len() == ours_deleted && refs_after(name, &ref_delta) <= 0 {
            tail_delete.push(bare(Op::DeleteChain(name.clone())));
        } else if want.release.contains(name) {
            notes.push(format!(
                "{table}: released chain {name} kept: other rules still use it"
            ));
        }
    }
    decl.extend(body);
    decl.extend(tail_flush);
    decl.extend(tail_delete);
    decl
}

fn count(delta: &mut BTreeMap<String, isize>, target: Option<&str>, by: isize) {
    if let Some(t) = target {
        *delta.entry(t.to_owned()).or_insert(0) += by;
    }
}

/// Reference changes of replacing `cur` by `want` (whole-run approximation: what leaves and what
/// comes, which is exact for counting purposes).
fn track_run(
    cur: &[KernelRule],
    want: &[&DesiredRule],
    eq: &dyn Fn(&KernelRule, &&DesiredRule) -> bool,
    delta: &mut BTreeMap<String, isize>,
) {
    let (p, s) = common_ends(cur, want, eq);
    for k in &cur[p..cur.len() - s] {
        count(delta, k.target.as_deref(), -1);
    }
    for d in &want[p..want.len() - s] {
        count(delta, d.target.as_deref(), 1);
    }
}

/// Our rules in a builtin or shared chain: by value, top group at `-I 1`, bottom group appended.
fn plan_shared(
    chain: &str,
    kernel: &[KernelRule],
    top: &[DesiredRule],
    bottom: &[DesiredRule],
    wrap: &WrapName,
    out: &mut Vec<PlannedOp>,
    delta: &mut BTreeMap<String, isize>,
) {
    let ours: Vec<&KernelRule> = kernel
        .iter()
        .filter(|k| k.is_marked_by(wrap.as_str()))
        .collect();
    let hash = |k: &KernelRule| k.marker.as_ref().map(|m| m.hash).unwrap_or_default();
    let top_set: BTreeSet<u64> = top.iter().map(|d| d.hash).collect();
    let bottom_set: BTreeSet<u64> = bottom.iter().map(|d| d.hash).collect();
    let mut seen = BTreeSet::new();
    let mut k_top = Vec::new();
    let mut k_bottom = Vec::new();
    let delete = |k: &KernelRule, out: &mut Vec<PlannedOp>, delta: &mut BTreeMap<String, isize>| {
        out.push(bare(Op::DeleteSpec(chain.to_owned(), k.spec.clone())));
        count(delta, k.target.as_deref(), -1);
    };
    for k in ours {
        let h = hash(k);
        if !seen.insert(h) {
            delete(k, out, delta); // a duplicate of ours (e.g. left by a crash)
        } else if top_set.contains(&h) {
            k_top.push(k);
        } else if bottom_set.contains(&h) {
            k_bottom.push(k);
        } else {
            delete(k, out, delta);
        }
    }
    let k_top_hashes: Vec<u64> = k_top.iter().map(|k| hash(k)).collect();
    let want_top: Vec<u64> = top.iter().map(|d| d.hash).collect();
    if k_top_hashes != want_top {
        let missing = want_top.len().checked_sub(k_top_hashes.len());
        let keeps_suffix = missing.is_some_and(|m| want_top[m..] == k_top_hashes[..]);
        let insert_upto = if keeps_suffix {
            missing.unwrap_or(0)
        } else {
            top.len()
        };
        if !keeps_suffix {
            for k in &k_top {
                delete(k, out, delta);
            }
        }
        for d in top[..insert_upto].iter().rev() {
            out.push(add(chain, d, Some(1)));
            count(delta, d.target.as_deref(), 1);
        }
    }
    let k_bottom_hashes: Vec<u64> = k_bottom.iter().map(|k| hash(k)).collect();
    let want_bottom: Vec<u64> = bottom.iter().map(|d| d.hash).collect();
    if k_bottom_hashes != want_bottom {
        let keeps_prefix = want_bottom.starts_with(&k_bottom_hashes);
        let from = if keeps_prefix { k_bottom.len() } else { 0 };
        if !keeps_prefix {
            for k in &k_bottom {
                delete(k, out, delta);
            }
        }
        for d in &bottom[from..] {
            out.push(add(chain, d, None));
            count(delta, d.target.as_deref(), 1);
        }
    }
}

/// Two kernel rules are the same rule: equal markers, or equal text when unmarked.
fn same_kernel(a: &KernelRule, b: &KernelRule) -> bool {
    match (&a.marker, &b.marker) {
        (Some(x), Some(y)) => x == y,
        (None, None) => a.spec == b.spec,
        _ => false,
    }
}

/// The operations that put our part of `now` back to what it was in `before` (after a restore
/// committed some tables and failed in a later one). Foreign rules are anchors: they must be
/// the same in both, and only the runs of our rules between them are edited, by index.
pub fn revert_table(
    table: Table,
    now: &KernelTable,
    before: &KernelTable,
    wrap: &WrapName,
    wraps_seen: &BTreeSet<String>,
) -> Result<Vec<Op>, String> {
    let mut decl = Vec::new();
    let mut body = Vec::new();
    let mut tail = Vec::new();
    // Builtin chains absent from `before` (a table that did not exist) count as empty.
    let empty_builtins: Vec<KernelChain> = now
        .chains()
        .iter()
        .filter(|n| table.is_builtin(&n.name) && before.chain(&n.name).is_none())
        .map(|n| KernelChain {
            name: n.name.clone(),
            policy: n.policy.clone(),
            rules: Vec::new(),
        })
        .collect();
    for b in before.chains().iter().chain(empty_builtins.iter()) {
        match now.chain(&b.name) {
            None => {
                if !table.is_builtin(&b.name) {
                    decl.push(Op::Declare(b.name.clone()));
                }
                body.extend(
                    b.rules
                        .iter()
                        .map(|r| Op::Append(b.name.clone(), r.spec.clone())),
                );
            }
            Some(n)
                if n.rules.len() == b.rules.len()
                    && n.rules.iter().zip(&b.rules).all(|(x, y)| same_kernel(x, y)) => {}
            Some(n) => {
                let own = owns_chain(wrap, wraps_seen, &b.name);
                let mine = |r: &KernelRule| own || r.is_marked_by(wrap.as_str());
                let anchors_now: Vec<usize> =
                    (0..n.rules.len()).filter(|&i| !mine(&n.rules[i])).collect();
                let anchors_before: Vec<usize> =
                    (0..b.rules.len()).filter(|&i| !mine(&b.rules[i])).collect();
                let same_foreign = anchors_now.len() == anchors_before.len()
                    && anchors_now
                        .iter()
                        .zip(&anchors_before)
                        .all(|(&i, &j)| n.rules[i].spec == b.rules[j].spec);
                if !same_foreign {
                    return Err(format!(
                        "foreign rules in {table} chain {} changed meanwhile",
                        b.name
                    ));
                }
                // Segments between anchors, last first so earlier indexes stay valid.
                let mut bounds_now = vec![0];
                let mut bounds_before = vec![0];
                for (&i, &j) in anchors_now.iter().zip(&anchors_before) {
                    bounds_now.extend([i, i + 1]);
                    bounds_before.extend([j, j + 1]);
                }
                bounds_now.push(n.rules.len());
                bounds_before.push(b.rules.len());
                let mut ops = Vec::new();
                for seg in (0..bounds_now.len() / 2).rev() {
                    let (ns, ne) = (bounds_now[2 * seg], bounds_now[2 * seg + 1]);
                    let (bs, be) = (bounds_before[2 * seg], bounds_before[2 * seg + 1]);
                    let mut seg_ops = Vec::new();
                    edit_run(
                        &b.name,
                        &n.rules[ns..ne],
                        ns,
                        &b.rules[bs..be],
                        ne == n.rules.len(),
                        &|k, w| same_kernel(k, w),
                        &|w, pos| match pos {
                            Some(p) => bare(Op::Insert(b.name.clone(), p, w.spec.clone())),
                            None => bare(Op::Append(b.name.clone(), w.spec.clone())),
                        },
                        &mut seg_ops,
                    );
                    ops.extend(seg_ops.into_iter().map(|o| o.op));
                }
                body.extend(ops);
            }
        }
    }
    for n in now.chains() {
        if before.chain(&n.name).is_none() && !table.is_builtin(&n.name) {
            if !n.rules.is_empty() {
                body.push(Op::Flush(n.name.clone()));
            }
            tail.push(Op::DeleteChain(n.name.clone()));
        }
    }
    decl.extend(body);
    decl.extend(tail);
    Ok(decl)
}

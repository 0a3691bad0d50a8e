//! The kernel's rule set as `iptables-save` prints it, the operations a restore input can
//! carry, and their effect (used to keep the committed state in memory after an apply, and by
//! the property tests of the planner).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::error::Error;
use crate::marker::{parse_marker, Marker};
use crate::names::Table;
use crate::rule::tokenize;

/// One rule of a chain, as the kernel prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRule {
    /// The text after `-A <chain> `.
    pub spec: String,
    /// The l3agent marker comment, if the rule carries one.
    pub marker: Option<Marker>,
    /// The `-j`/`-g` target.
    pub target: Option<String>,
}

impl KernelRule {
    /// Parses the text after `-A <chain> ` (markers and target are extracted).
    pub fn from_spec(spec: &str) -> KernelRule {
        // Fast path for the common rule without quotes or markers: plain words.
        if !spec.contains('"') && !spec.contains("l3agent:") {
            let mut words = spec.split(' ');
            let mut target = None;
            while let Some(w) = words.next() {
                if matches!(w, "-j" | "-g" | "--jump" | "--goto") {
                    target = words.next().map(str::to_owned);
                }
            }
            return KernelRule {
                spec: spec.to_owned(),
                marker: None,
                target,
            };
        }
        let mut marker = None;
        let mut target = None;
        // Tokenising is only needed to find comments and the target; a rule iptables-save
        // printed always tokenises, anything else simply has neither.
        if let Ok(tokens) = tokenize("save", spec) {
            for w in tokens.windows(2) {
                if w[0].quoted {
                    continue;
                }
                match w[0].value.as_str() {
                    "--comment" if marker.is_none() && spec.contains("l3agent:") => {
                        marker = parse_marker(&w[1].value);
                    }
                    "-j" | "-g" | "--jump" | "--goto" => target = Some(w[1].value.clone()),
                    _ => {}
                }
            }
        }
        KernelRule {
            spec: spec.to_owned(),
            marker,
            target,
        }
    }

    /// Whether the rule carries `wrap`'s marker.
    pub fn is_marked_by(&self, wrap: &str) -> bool {
        self.marker.as_ref().is_some_and(|m| m.wrap == wrap)
    }
}

/// One chain: name, policy (builtin chains) and rules in kernel order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelChain {
    /// Chain name.
    pub name: String,
    /// Policy of a builtin chain (`ACCEPT`, `DROP`), `None` for user chains.
    pub policy: Option<String>,
    /// Rules in order.
    pub rules: Vec<KernelRule>,
}

/// One table of one family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelTable {
    chains: Vec<KernelChain>,
    index: HashMap<String, usize>,
    refs: HashMap<String, usize>,
}

impl KernelTable {
    /// The chains in save order.
    pub fn chains(&self) -> &[KernelChain] {
        &self.chains
    }

    /// The chain named `name`.
    pub fn chain(&self, name: &str) -> Option<&KernelChain> {
        self.index.get(name).map(|&i| &self.chains[i])
    }

    /// How many rules in the table jump to `chain`.
    pub fn references(&self, chain: &str) -> usize {
        self.refs.get(chain).copied().unwrap_or(0)
    }

    fn add_chain(&mut self, name: &str, policy: Option<String>) -> bool {
        if self.index.contains_key(name) {
            return false;
        }
        self.index.insert(name.to_owned(), self.chains.len());
        self.chains.push(KernelChain {
            name: name.to_owned(),
            policy,
            rules: Vec::new(),
        });
        true
    }

    fn chain_mut(&mut self, name: &str) -> Result<&mut KernelChain, String> {
        match self.index.get(name) {
            Some(&i) => Ok(&mut self.chains[i]),
            None => Err(format!("chain {name} does not exist")),
        }
    }

    fn count_ref(&mut self, rule: &KernelRule, add: bool) {
        if let Some(t) = &rule.target {
            let n = self.refs.entry(t.clone()).or_insert(0);
            if add {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Applies one restore operation, as the kernel would. Builtin chains spring into existence
    /// on first use, as they do with both backends.
    pub fn apply(&mut self, table: Table, op: &Op) -> Result<(), String> {
        let ensure_builtin = |t: &mut KernelTable, chain: &str| {
            if table.is_builtin(chain) {
                t.add_chain(chain, Some("ACCEPT".to_owned()));
            }
        };
        match op {
            Op::Declare(name) => {
                if !self.add_chain(name, None) {
                    // Declaring an existing chain in --noflush mode flushes it.
                    self.apply(table, &Op::Flush(name.clone()))?;
                }
            }
            Op::Append(chain, spec) => {
                ensure_builtin(self, chain);
                let rule = KernelRule::from_spec(spec);
                self.count_ref(&rule, true);
                self.chain_mut(chain)?.rules.push(rule);
            }
            Op::Insert(chain, pos, spec) => {
                ensure_builtin(self, chain);
                let rule = KernelRule::from_spec(spec);
                let c = self.chain_mut(chain)?;
                if *pos == 0 || *pos > c.rules.len() + 1 {
                    return Err(format!("index {pos} out of range in {chain}"));
                }
                c.rules.insert(pos - 1, rule.clone());
                self.count_ref(&rule, true);
            }
            Op::DeleteAt(chain, pos) => {
                let c = self.chain_mut(chain)?;
                if *pos == 0 || *pos > c.rules.len() {
                    return Err(format!("index {pos} out of range in {chain}"));
                }
                let rule = c.rules.remove(pos - 1);
                self.count_ref(&rule, false);
            }
            Op::DeleteSpec(chain, spec) => {
                let c = self.chain_mut(chain)?;
                let at = c
                    .rules
                    .iter()
                    .position(|r| &r.spec == spec)
                    .ok_or_else(|| format!("no rule {spec:?} in {chain}"))?;
                let rule = c.rules.remove(at);
                self.count_ref(&rule, false);
            }
            Op::Flush(chain) => {
                let rules = std::mem::take(&mut self.chain_mut(chain)?.rules);
                for r in &rules {
                    self.count_ref(r, false);
                }
            }
            Op::DeleteChain(chain) => {
                let i = *self
                    .index
                    .get(chain)
                    .ok_or_else(|| format!("chain {chain} does not exist"))?;
                if !self.chains[i].rules.is_empty() || self.references(chain) > 0 {
                    return Err(format!("chain {chain} is not empty or still referenced"));
                }
                self.chains.remove(i);
                self.index = self
                    .chains
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name.clone(), i))
                    .collect();
            }
        }
        Ok(())
    }
}

/// One family's tables, plus the wrap names seen in markers (to keep chain ownership exact when
/// one wrap name is a prefix of another: `a-` owns `a-x` only if no wrap `a-x...` exists).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    /// Tables present in the kernel (an absent table is empty).
    pub tables: BTreeMap<Table, KernelTable>,
    /// Wrap names seen in marker comments.
    pub wraps: BTreeSet<String>,
}

impl KernelState {
    /// The table, or an empty one.
    pub fn table(&self, table: Table) -> &KernelTable {
        static EMPTY: std::sync::OnceLock<KernelTable> = std::sync::OnceLock::new();
        self.tables
            .get(&table)
            .unwrap_or_else(|| EMPTY.get_or_init(KernelTable::default))
    }

    /// Applies a table's operations (see [`KernelTable::apply`]).
    pub fn apply<'a>(
        &mut self,
        table: Table,
        ops: impl IntoIterator<Item = &'a Op>,
    ) -> Result<(), String> {
        let t = self.tables.entry(table).or_default();
        for op in ops {
            t.apply(table, op)?;
            if let Op::Append(_, spec) | Op::Insert(_, _, spec) = op {
                if spec.contains("l3agent:") {
                    if let Some(m) = KernelRule::from_spec(spec).marker {
                        self.wraps.insert(m.wrap);
                    }
                }
            }
        }
        Ok(())
    }

    /// Renders the state as `iptables-save` would print it (tables in name order).
    pub fn to_save(&self) -> String {
        let size: usize = self
            .tables
            .values()
            .flat_map(|t| t.chains())
            .map(|c| {
                c.name.len() * (c.rules.len() + 1)
                    + c.rules.iter().map(|r| r.spec.len() + 5).sum::<usize>()
                    + 16
            })
            .sum();
        let mut out = String::with_capacity(size + 64);
        for (table, t) in &self.tables {
            out.push('*');
            out.push_str(table.as_str());
            out.push('\n');
            for c in t.chains() {
                out.push(':');
                out.push_str(&c.name);
                out.push(' ');
                out.push_str(c.policy.as_deref().unwrap_or("-"));
                out.push_str(" [0:0]\n");
            }
            for c in t.chains() {
                for r in &c.rules {
                    // As Op::Append renders it.
                    out.push_str("-A ");
                    out.push_str(&c.name);
                    out.push_str(sep(&r.spec));
                    out.push_str(&r.spec);
                    out.push('\n');
                }
            }
            out.push_str("COMMIT\n");
        }
        out
    }

    /// Parses `iptables-save` output (one family, any tables; tables other than filter, nat,
    /// mangle and raw are skipped). Fails on structure errors and on the nft backend's
    /// "table is incompatible" notice, since such a table cannot be managed safely.
    pub fn parse_save(text: &str) -> Result<KernelState, Error> {
        let mut state = KernelState::default();
        let mut current: Option<(Option<Table>, KernelTable)> = None;
        // Lines end at '\n' only (`lines()` would also eat a '\r' that is part of a rule, and
        // the rule would not read back as it was written).
        for (n, line) in text.split('\n').enumerate() {
            let lineno = n + 1;
            let err = |reason: String| Error::Save {
                line: lineno,
                reason,
            };
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                if comment.contains("is incompatible") {
                    return Err(err(format!(
                        "the kernel holds rules iptables cannot show ({})",
                        comment.trim()
                    )));
                }
                continue;
            }
            if let Some(name) = line.strip_prefix('*') {
                if current.is_some() {
                    return Err(err("table started before COMMIT".into()));
                }
                current = Some((Table::parse(name.trim()), KernelTable::default()));
                continue;
            }
            let Some((table, kt)) = current.as_mut() else {
                return Err(err(format!("line outside a table: {line:?}")));
            };
            if line == "COMMIT" {
                let (table, kt) = current.take().expect("checked above");
                if let Some(t) = table {
                    state.tables.insert(t, kt);
                }
                continue;
            }
            if table.is_none() {
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                let mut parts = decl.split(' ');
                let name = parts.next().unwrap_or_default();
                let policy = parts.next().filter(|p| *p != "-").map(str::to_owned);
                if name.is_empty() || !kt.add_chain(name, policy) {
                    return Err(err(format!("bad or repeated chain declaration {line:?}")));
                }
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
                let rule = KernelRule::from_spec(spec);
                if let Some(m) = &rule.marker {
                    state.wraps.insert(m.wrap.clone());
                }
                kt.count_ref(&rule, true);
                kt.chain_mut(chain).map_err(err)?.rules.push(rule);
            } else {
                return Err(err(format!("unexpected line {line:?}")));
            }
        }
        if current.is_some() {
            return Err(Error::Save {
                line: text.lines().count(),
                reason: "table without COMMIT".into(),
            });
        }
        Ok(state)
    }
}

/// One line of a restore input (inside a `*table` block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `:NAME - [0:0]`: create a chain (flushes it if it exists, so only used for new chains).
    Declare(String),
    /// `-A CHAIN SPEC`
    Append(String, String),
    /// `-I CHAIN POS SPEC` (1-based)
    Insert(String, usize, String),
    /// `-D CHAIN POS` (1-based), used only in chains l3agent owns.
    DeleteAt(String, usize),
    /// `-D CHAIN SPEC`: delete by value, used in shared chains.
    DeleteSpec(String, String),
    /// `-F CHAIN`
    Flush(String),
    /// `-X CHAIN`
    DeleteChain(String),
}

impl Op {
    /// Parses one restore line l3agent writes (the inverse of [`Op::render`]).
    pub fn parse(line: &str) -> Option<Op> {
        if let Some(decl) = line.strip_prefix(':') {
            return Some(Op::Declare(decl.split(' ').next()?.to_owned()));
        }
        let (cmd, rest) = line.split_once(' ')?;
        let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
        let (chain, spec) = (chain.to_owned(), spec.to_owned());
        let number = |s: &str| s.parse::<usize>().ok();
        Some(match cmd {
            "-A" => Op::Append(chain, spec),
            "-I" => {
                let (pos, spec) = spec.split_once(' ').unwrap_or((&spec, ""));
                Op::Insert(chain, number(pos)?, spec.to_owned())
            }
            "-D" => match number(&spec) {
                Some(n) => Op::DeleteAt(chain, n),
                None => Op::DeleteSpec(chain, spec),
            },
            "-F" => Op::Flush(chain),
            "-X" => Op::DeleteChain(chain),
            _ => return None,
        })
    }

    /// The restore line.
    pub fn render(&self) -> String {
        let mut s = String::new();
        self.render_into(&mut s);
        s
    }

    /// `-A CHAIN SPEC` without an [`Op`] made for it (a line written before its plan is).
    pub fn render_append(out: &mut String, chain: &str, spec: &str) {
        out.push_str("-A ");
        out.push_str(chain);
        out.push_str(sep(spec));
        out.push_str(spec);
    }

    /// Appends the restore line to `out`.
    pub fn render_into(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = match self {
            Op::Declare(c) => write!(out, ":{c} - [0:0]"),
            Op::Append(c, s) => {
                Op::render_append(out, c, s);
                Ok(())
            }
            Op::Insert(c, p, s) => write!(out, "-I {c} {p}{}{s}", sep(s)),
            Op::DeleteAt(c, p) => write!(out, "-D {c} {p}"),
            Op::DeleteSpec(c, s) => write!(out, "-D {c}{}{s}", sep(s)),
            Op::Flush(c) => write!(out, "-F {c}"),
            Op::DeleteChain(c) => write!(out, "-X {c}"),
        };
    }
}

fn sep(spec: &str) -> &'static str {
    if spec.is_empty() {
        ""
    } else {
        " "
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured with: ip netns add t; ip netns exec t iptables-nft-restore -n < rules;
    // ip netns exec t iptables-nft-save   (iptables v1.8.9, nf_tables)
    const NFT_SAVE: &str =
        "# Generated by iptables-nft-save v1.8.9 (nf_tables) on Sun Nov 22 11:25:48 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:l3agent-INPUT - [0:0]
-A INPUT -m comment --comment \"l3agent:l3agent:00000000000000ff\" -j l3agent-INPUT
-A INPUT -m comment --comment \"a \\\"q\\\" b\" -j ACCEPT
-A l3agent-INPUT -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
# Completed on Sun Nov 22 11:25:48 2026
*security
:INPUT ACCEPT [0:0]
-A INPUT -j ACCEPT
COMMIT
";

    #[test]
    fn parses_a_capture() {
        let s = KernelState::parse_save(NFT_SAVE).unwrap();
        let f = s.table(Table::Filter);
        assert_eq!(f.chains().len(), 4);
        let input = f.chain("INPUT").unwrap();
        assert_eq!(input.policy.as_deref(), Some("ACCEPT"));
        assert_eq!(
            input.rules[0].marker,
            Some(Marker {
                wrap: "l3agent".into(),
                hash: 255
            })
        );
        assert_eq!(input.rules[0].target.as_deref(), Some("l3agent-INPUT"));
        assert_eq!(input.rules[1].marker, None);
        assert_eq!(f.references("l3agent-INPUT"), 1);
        assert!(s.wraps.contains("l3agent"));
        assert!(!s.tables.contains_key(&Table::Nat));
    }

    #[test]
    fn structure_errors() {
        assert!(KernelState::parse_save("*filter\n:INPUT ACCEPT [0:0]\n").is_err());
        assert!(KernelState::parse_save("-A INPUT -j ACCEPT\n").is_err());
        assert!(KernelState::parse_save("*filter\n-A NOPE -j ACCEPT\nCOMMIT\n").is_err());
        let e = KernelState::parse_save("# Table `filter' is incompatible, use 'nft' tool.\n")
            .unwrap_err();
        assert!(e.to_string().contains("incompatible"));
    }

    #[test]
    fn ops_render_and_parse() {
        for op in [
            Op::Declare("c".into()),
            Op::Append("c".into(), "-j ACCEPT".into()),
            Op::Append("c".into(), String::new()),
            Op::Insert("c".into(), 3, "-s 192.0.2.1/32 -j DROP".into()),
            Op::DeleteAt("c".into(), 2),
            Op::DeleteSpec("c".into(), "-j ACCEPT".into()),
            Op::Flush("c".into()),
            Op::DeleteChain("c".into()),
        ] {
            assert_eq!(Op::parse(&op.render()), Some(op.clone()), "{}", op.render());
        }
    }

    #[test]
    fn ops_apply_like_the_kernel() {
        let mut t = KernelTable::default();
        t.apply(Table::Filter, &Op::Declare("c".into())).unwrap();
        t.apply(Table::Filter, &Op::Append("c".into(), "-j ACCEPT".into()))
            .unwrap();
        t.apply(Table::Filter, &Op::Insert("c".into(), 1, "-j DROP".into()))
            .unwrap();
        t.apply(Table::Filter, &Op::Append("INPUT".into(), "-j c".into()))
            .unwrap();
        assert_eq!(t.references("c"), 1);
        assert!(t
            .apply(Table::Filter, &Op::DeleteChain("c".into()))
            .is_err());
        t.apply(
            Table::Filter,
            &Op::DeleteSpec("INPUT".into(), "-j c".into()),
        )
        .unwrap();
        t.apply(Table::Filter, &Op::DeleteAt("c".into(), 1))
            .unwrap();
        assert_eq!(t.chain("c").unwrap().rules[0].spec, "-j ACCEPT");
        t.apply(Table::Filter, &Op::Flush("c".into())).unwrap();
        t.apply(Table::Filter, &Op::DeleteChain("c".into()))
            .unwrap();
        assert!(t.chain("c").is_none());
    }

    #[test]
    fn a_carriage_return_inside_a_rule_reads_back_as_written() {
        // Found by the save_parser fuzz target.
        let text = "*nat\n:R\n-A R \r\r\nCOMMIT";
        let state = KernelState::parse_save(text).unwrap();
        let rendered = state.to_save();
        assert_eq!(
            KernelState::parse_save(&rendered).unwrap().to_save(),
            rendered
        );
    }
}

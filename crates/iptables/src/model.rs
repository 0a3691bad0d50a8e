//! The desired state of one manager (one wrap name) in one network namespace: the Rust
//! counterpart of Neutron's `IptablesManager` tables, chains and rules, without any I/O.
//!
//! Every mutation validates its input by type before anything is stored, and records which
//! chains changed, so that an apply only plans what changed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::error::Error;
use crate::kernel::Op;
use crate::marker::{marker_text, rule_hash};
use crate::names::{is_jump_chain, ChainName, Comment, Family, Table, Tag, WrapName};
use crate::rule::ParsedRule;

/// Neutron's constructor options, plus the names of its shared chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelOptions {
    /// No mangle table and a nat table with PREROUTING only (Neutron's firewall manager).
    pub state_less: bool,
    /// Full nat table (PREROUTING, OUTPUT, POSTROUTING, snat, float-snat) for IPv4.
    pub nat: bool,
    /// Manage ip6tables as well.
    pub ipv6: bool,
    /// Put the fixed comments on the default rules (Neutron's `comment_iptables_rules`).
    pub comments: bool,
    /// The shared filter chain at the top of FORWARD and OUTPUT (`neutron-filter-top`).
    pub filter_top: ChainName,
    /// The shared nat chain at the bottom of POSTROUTING (`neutron-postrouting-bottom`).
    pub postrouting_bottom: ChainName,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            state_less: false,
            nat: true,
            ipv6: true,
            comments: true,
            filter_top: ChainName::new("filter_top", "neutron-filter-top").expect("valid"),
            postrouting_bottom: ChainName::new("postrouting_bottom", "neutron-postrouting-bottom")
                .expect("valid"),
        }
    }
}

impl ModelOptions {
    /// Checks the two shared chain names against what the default rules need: each gets a
    /// `-j <name>` rule in a builtin chain and is created as an unwrapped chain, so it must not
    /// be a builtin chain (of any table), must not be one of `wrap`'s own chains
    /// (`<wrap>-...`), and must read as a chain after `-j` (see
    /// [`crate::names::is_jump_chain`]: an all-upper-case name is taken for a target
    /// extension). Errors name the rules file's field (`filter_top_chain`,
    /// `postrouting_bottom_chain`).
    pub fn validate(&self, wrap: &WrapName) -> Result<(), Error> {
        for (field, name) in [
            ("filter_top_chain", &self.filter_top),
            ("postrouting_bottom_chain", &self.postrouting_bottom),
        ] {
            let name = name.as_str();
            let reason = if Table::ALL.iter().any(|t| t.is_builtin(name)) {
                "is a builtin chain; the shared chain must be a chain of its own (such as \
                 neutron-filter-top), which l3agent creates and jumps to"
                    .to_owned()
            } else if wrap.strip(name).is_some() {
                format!("names one of this manager's own chains ({wrap}-...), which are wrapped")
            } else if !is_jump_chain(name) {
                "must contain a lower-case letter or '-': iptables would take an upper-case \
                 name after -j for a target extension"
                    .to_owned()
            } else {
                continue;
            };
            return Err(Error::invalid(field, name, reason));
        }
        Ok(())
    }
}

/// Where a rule came from, to name it in errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The chain as the caller wrote it.
    pub chain: String,
    /// The rule as the caller wrote it.
    pub rule: String,
}

/// A rule ready for the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRule {
    /// The text after `-A <chain> ` (canonical when possible, with comments and marker).
    pub spec: String,
    /// The identity hash; `marked` says whether it is carried in a marker comment.
    pub hash: u64,
    /// Whether the spec carries the marker (then the kernel rule is matched by hash).
    pub marked: bool,
    /// The `-j`/`-g` target.
    pub target: Option<String>,
    /// What the caller wrote (shared with the plan's operations).
    pub origin: Arc<Origin>,
    /// The caller's comment.
    pub comment: Option<Comment>,
    /// The caller's tag.
    pub tag: Option<Tag>,
    /// How many times the same rule was added (Neutron B-04: never silently collapsed).
    pub refs: u32,
}

/// How a chain is owned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainKind {
    /// `<wrap>-<name>`: entirely ours.
    Own,
    /// An unwrapped chain we declared: created if missing, shared with others; only our marked
    /// rules in it are ours.
    Shared,
    /// A builtin chain we put unwrapped rules in (any other unwrapped chain must be declared,
    /// and is then [`ChainKind::Shared`]).
    Foreign,
}

/// One chain of the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredChain {
    /// Ownership.
    pub kind: ChainKind,
    /// The name as the caller wrote it (without the wrap prefix).
    pub short: String,
    /// Rules added with `top`, in order; they come first.
    pub top: Vec<DesiredRule>,
    /// The other rules, in order.
    pub bottom: Vec<DesiredRule>,
}

impl DesiredChain {
    /// All rules in chain order.
    pub fn rules(&self) -> impl Iterator<Item = &DesiredRule> {
        self.top.iter().chain(self.bottom.iter())
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut Vec<DesiredRule>> {
        [&mut self.top, &mut self.bottom].into_iter()
    }
}

/// One table of the desired state, keyed by kernel chain name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredTable {
    /// Chains by kernel name.
    pub chains: BTreeMap<String, DesiredChain>,
    /// Unwrapped chains removed from the desired state: deleted once nothing uses them.
    pub release: BTreeSet<String>,
}

/// A rule resolved against the model: its kernel chain, the chain's kind, the rule.
type Resolved = (String, ChainKind, DesiredRule);

/// The rule hashes of chains, by kernel name (see [`IptablesModel::add_rules_helped`]).
type Known = HashMap<String, HashSet<u64, Prehashed>>;

/// For keys that are already hashes: their own hash.
#[derive(Clone, Copy, Default)]
pub(crate) struct Prehashed;

impl std::hash::BuildHasher for Prehashed {
    type Hasher = PrehashedHasher;
    fn build_hasher(&self) -> PrehashedHasher {
        PrehashedHasher(0)
    }
}

/// See [`Prehashed`].
#[derive(Default)]
pub(crate) struct PrehashedHasher(u64);

impl std::hash::Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// How many threads [`IptablesModel::add_rules`] uses: the cores, at most 4.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4)
}

/// Threads that join a model build only once [`Standby::release`]d: for a caller whose other
/// threads are busy at first (reading the kernel, which may take a moment or much longer) and
/// should help as soon as they are free. Until then the build goes on without them; a build
/// that is done before the release never uses them.
#[derive(Debug)]
pub struct Standby {
    helpers: usize,
    released: std::sync::Mutex<bool>,
    changed: std::sync::Condvar,
}

impl Standby {
    /// `helpers` threads on standby.
    pub fn new(helpers: usize) -> Standby {
        Standby {
            helpers,
            released: std::sync::Mutex::new(false),
            changed: std::sync::Condvar::new(),
        }
    }

    /// Lets the standby threads join (now and in every later part of the build).
    pub fn release(&self) {
        *self.released.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.changed.notify_all();
    }

    /// Waits until released (true) or until the part of the build is `finished` (false).
    fn wait(&self, finished: &std::sync::atomic::AtomicBool) -> bool {
        let mut released = self.released.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if *released {
                return true;
            }
            if finished.load(std::sync::atomic::Ordering::Acquire) {
                return false;
            }
            released = self
                .changed
                .wait(released)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Ends the waits of one part of the build.
    fn finish(&self, finished: &std::sync::atomic::AtomicBool) {
        // Under the lock: a thread between its check and its wait cannot miss this.
        let _guard = self.released.lock().unwrap_or_else(|e| e.into_inner());
        finished.store(true, std::sync::atomic::Ordering::Release);
        self.changed.notify_all();
    }
}

/// Takes one table's rules as `iptables-restore` lines while the model is being built: a
/// one-shot apply writes them into a restore that commits only once the whole model is built
/// and planned (see `l3agent_iptables_exec::stream`).
pub trait Feed: Sync {
    /// Called before the rules of one table are read (the model holds every chain of it):
    /// whether this table's rules are wanted.
    fn table(
        &self,
        model: &IptablesModel,
        family: Family,
        table: Table,
        rules: &[RuleSpec<'_>],
    ) -> bool;
    /// Whether the rules of `chain` (its kernel name) are wanted. Only rules appended to a
    /// wrapped chain (`wrap`, not `top`) are offered.
    fn takes(&self, chain: &str) -> bool;
    /// The `-A` lines of the wanted rules of piece `index` of the table's rules: pieces are
    /// consecutive runs of rules numbered from 0 in rule order, each given once, from any
    /// thread and in any order. A rule that fails to read is left out (the model then fails).
    fn lines(&self, index: usize, text: String);
}

/// What helps a model build besides the calling thread.
#[derive(Clone, Copy)]
pub struct Help<'a> {
    /// Threads in all (at least the caller's).
    pub threads: usize,
    /// Threads that join once released.
    pub standby: Option<&'a Standby>,
    /// Takes a table's rules as restore lines as soon as they are read.
    pub feed: Option<&'a dyn Feed>,
}

impl std::fmt::Debug for Help<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Help")
            .field("threads", &self.threads)
            .field("standby", &self.standby)
            .field("feed", &self.feed.is_some())
            .finish()
    }
}

impl Help<'_> {
    /// `threads` threads, nothing else.
    pub fn threads(threads: usize) -> Help<'static> {
        Help {
            threads,
            standby: None,
            feed: None,
        }
    }
}

/// A rule to add or remove, as Neutron's `add_rule(chain, rule, wrap, top, tag, comment)`.
#[derive(Debug, Clone, Copy)]
pub struct RuleSpec<'a> {
    /// Chain name (wrapped unless `wrap` is false).
    pub chain: &'a str,
    /// Rule text; `$name` words jump to the wrapped chain `name`.
    pub rule: &'a str,
    /// The chain is one of ours (`<wrap>-<chain>`).
    pub wrap: bool,
    /// Place before the non-top rules.
    pub top: bool,
    /// Tag for [`IptablesModel::clear_rules_by_tag`].
    pub tag: Option<&'a str>,
    /// Comment (`-m comment`).
    pub comment: Option<&'a str>,
}

impl<'a> RuleSpec<'a> {
    /// A wrapped, non-top rule without tag or comment.
    pub fn new(chain: &'a str, rule: &'a str) -> Self {
        RuleSpec {
            chain,
            rule,
            wrap: true,
            top: false,
            tag: None,
            comment: None,
        }
    }
}

/// The desired state of one manager: per family, per table.
#[derive(Debug, Clone)]
pub struct IptablesModel {
    wrap: WrapName,
    options: ModelOptions,
    tables: [BTreeMap<Table, DesiredTable>; 2],
    dirty: [BTreeMap<Table, BTreeSet<String>>; 2],
    /// Rules an earlier model resolved (see [`Hints`]); only while rules are being added.
    hints: Option<Arc<Hints>>,
}

/// The rules of a model as it resolved them, for a new model of the same namespace to resolve
/// the same rules again without reading them (reading, checking and canonicalising a rule's
/// text is most of the cost of building a model; an agent compiles a router again for each
/// of its events, and its rules are mostly the ones it had).
///
/// A hint is taken only for exactly the same rule: the same family, table, kernel chain and
/// chain kind, the same text as written, comment, tag and place (`top`); every `$name` of its
/// text must still be a chain of ours and its target what the text was resolved to. Anything
/// else, or a model with another wrap name or other options, reads the rule as usual (so
/// every error is still the reader's). What a hint gives is what reading gave before: a
/// reader only ever resolves the same rule text to the same rule.
///
/// Each hint is taken once (moved into the new model, not copied): a rule added twice reads
/// its second copy.
#[derive(Debug, Default)]
pub struct Hints {
    wrap: Option<WrapName>,
    options: ModelOptions,
    rules: std::sync::Mutex<HashMap<u64, Hint, Prehashed>>,
}

#[derive(Debug)]
struct Hint {
    family: Family,
    table: Table,
    full: String,
    kind: ChainKind,
    top: bool,
    rule: DesiredRule,
}

/// The key of a rule as written, for [`Hints`] (FNV-1a over its parts, each closed by a byte
/// no part holds: a key only finds a candidate, which is then compared in full).
fn hint_key(family: Family, table: Table, full: &str, spec: &RuleSpec<'_>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut put = |b: &[u8]| {
        for &x in b.iter().chain(&[0xff]) {
            h = (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    put(&[family.index() as u8, table as u8, u8::from(spec.top)]);
    put(full.as_bytes());
    put(spec.chain.as_bytes());
    put(spec.rule.as_bytes());
    put(spec.comment.unwrap_or("\u{0}").as_bytes());
    put(spec.tag.unwrap_or("\u{0}").as_bytes());
    h
}

impl Hints {
    fn rules(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Hint, Prehashed>> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many rules are hinted (and not taken yet).
    pub fn len(&self) -> usize {
        self.rules().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the hint of exactly this rule, if there is one.
    fn take(&self, family: Family, table: Table, full: &str, spec: &RuleSpec<'_>) -> Option<Hint> {
        let mut rules = self.rules();
        let key = hint_key(family, table, full, spec);
        let h = rules.get(&key)?;
        let r = &h.rule;
        let same = h.family == family
            && h.table == table
            && h.full == full
            && h.top == spec.top
            && r.origin.chain == spec.chain
            && r.origin.rule == spec.rule
            && r.comment.as_ref().map(Comment::as_str) == spec.comment
            && r.tag.as_ref().map(Tag::as_str) == spec.tag;
        if same {
            rules.remove(&key)
        } else {
            None
        }
    }
}

impl IptablesModel {
    /// A model with Neutron's default chains and rules for these options (I-03..I-06).
    ///
    /// # Panics
    ///
    /// If the options are invalid (see [`ModelOptions::validate`]); options read from outside
    /// go through [`IptablesModel::try_new`].
    pub fn new(wrap: WrapName, options: ModelOptions) -> Self {
        IptablesModel::try_new(wrap, options).expect("valid model options")
    }

    /// [`IptablesModel::new`] for options from outside: invalid options are an error (naming
    /// the option, see [`ModelOptions::validate`]), not a panic.
    pub fn try_new(wrap: WrapName, options: ModelOptions) -> Result<Self, Error> {
        options.validate(&wrap)?;
        let mut m = IptablesModel {
            wrap,
            options,
            tables: Default::default(),
            dirty: Default::default(),
            hints: None,
        };
        m.install_defaults()?;
        Ok(m)
    }

    /// A SHA-256 digest of everything that decides what the kernel must hold for this model:
    /// wrap name, options, and per family and table every chain (name, ownership) with its
    /// rules as they will be written, and the shared chains being released. Two models with
    /// the same digest plan the same against any kernel state; what the applied-state record
    /// of a one-shot apply keeps to prove "this is what we applied".
    pub fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut put = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        put(b"l3agent-iptables-model-1");
        put(self.wrap.as_str().as_bytes());
        put(format!("{:?}", self.options).as_bytes());
        for family in Family::ALL {
            put(family.as_str().as_bytes());
            for (table, t) in &self.tables[family.index()] {
                put(table.as_str().as_bytes());
                for (name, c) in &t.chains {
                    put(name.as_bytes());
                    put(format!("{:?} {} {}", c.kind, c.top.len(), c.bottom.len()).as_bytes());
                    for r in c.rules() {
                        put(r.spec.as_bytes());
                        put(&r.hash.to_le_bytes());
                        put(&[u8::from(r.marked)]);
                    }
                }
                for name in &t.release {
                    put(b"release");
                    put(name.as_bytes());
                }
            }
        }
        h.finalize().into()
    }

    /// Whether `other` describes the same rules (wrap name, options, chains and rules),
    /// whatever either has pending.
    pub fn same_rules(&self, other: &IptablesModel) -> bool {
        self.wrap == other.wrap && self.options == other.options && self.tables == other.tables
    }

    /// Its rules as resolved, for [`IptablesModel::use_hints`] of the next model of the same
    /// namespace.
    pub fn hints(&self) -> Hints {
        let mut rules = HashMap::with_hasher(Prehashed);
        for (fi, tables) in self.tables.iter().enumerate() {
            let family = Family::ALL[fi];
            for (&table, t) in tables {
                for (full, c) in &t.chains {
                    for (top, list) in [(true, &c.top), (false, &c.bottom)] {
                        for r in list {
                            let spec = RuleSpec {
                                chain: &r.origin.chain,
                                rule: &r.origin.rule,
                                wrap: false,
                                top,
                                tag: r.tag.as_ref().map(Tag::as_str),
                                comment: r.comment.as_ref().map(Comment::as_str),
                            };
                            let key = hint_key(family, table, full, &spec);
                            rules.entry(key).or_insert_with(|| Hint {
                                family,
                                table,
                                full: full.clone(),
                                kind: c.kind,
                                top,
                                rule: DesiredRule {
                                    refs: 1,
                                    ..r.clone()
                                },
                            });
                        }
                    }
                }
            }
        }
        Hints {
            wrap: Some(self.wrap.clone()),
            options: self.options.clone(),
            rules: std::sync::Mutex::new(rules),
        }
    }

    /// Resolves the rules added from now on that `hints` holds as it did (see [`Hints`]),
    /// until [`IptablesModel::drop_hints`]. Hints of a model with another wrap name or other
    /// options are ignored.
    pub fn use_hints(&mut self, hints: Arc<Hints>) {
        if hints.wrap.as_ref() == Some(&self.wrap) && hints.options == self.options {
            self.hints = Some(hints);
        }
    }

    /// Stops using hints (and lets go of them).
    pub fn drop_hints(&mut self) {
        self.hints = None;
    }

    /// The hinted resolution of `spec` into `full` (a chain of `kind`) in `t`, if it holds
    /// now: every `$name` word of the text is still a chain of ours, and a target of ours is a
    /// chain of ours.
    fn hinted(
        &self,
        family: Family,
        table: Table,
        t: &DesiredTable,
        full: &str,
        kind: ChainKind,
        spec: &RuleSpec<'_>,
    ) -> Option<DesiredRule> {
        let hints = self.hints.as_ref()?;
        let h = hints.take(family, table, full, spec)?;
        if h.kind != kind {
            return None;
        }
        let own = |chain: &str| {
            t.chains
                .get(chain)
                .is_some_and(|c| c.kind == ChainKind::Own)
        };
        for word in spec.rule.split_ascii_whitespace() {
            if let Some(name) = word.strip_prefix('$') {
                let short = ChainName::new("rule", name).ok()?;
                if !own(&self.wrap.wrap_chain("rule", &short).ok()?) {
                    return None;
                }
            }
        }
        if let Some(target) = &h.rule.target {
            if self.wrap.strip(target).is_some() && !own(target) {
                return None;
            }
        }
        Some(h.rule)
    }

    /// The wrap name.
    pub fn wrap(&self) -> &WrapName {
        &self.wrap
    }

    /// The options.
    pub fn options(&self) -> &ModelOptions {
        &self.options
    }

    /// The families this model manages.
    pub fn families(&self) -> Vec<Family> {
        if self.options.ipv6 {
            Family::ALL.to_vec()
        } else {
            vec![Family::V4]
        }
    }

    /// The tables of a family this model manages (mangle only when stateful).
    pub fn tables_of(&self, family: Family) -> Vec<Table> {
        self.tables[family.index()].keys().copied().collect()
    }

    /// The desired state of a table.
    pub fn table(&self, family: Family, table: Table) -> Option<&DesiredTable> {
        self.tables[family.index()].get(&table)
    }

    /// Chains changed since the last [`IptablesModel::take_dirty`], by table.
    pub fn dirty(&self, family: Family) -> &BTreeMap<Table, BTreeSet<String>> {
        &self.dirty[family.index()]
    }

    /// Returns and clears the changed chains of a family.
    pub fn take_dirty(&mut self, family: Family) -> BTreeMap<Table, BTreeSet<String>> {
        std::mem::take(&mut self.dirty[family.index()])
    }

    /// Marks changed chains again (after a failed apply).
    pub fn restore_dirty(&mut self, family: Family, dirty: BTreeMap<Table, BTreeSet<String>>) {
        for (t, chains) in dirty {
            self.dirty[family.index()]
                .entry(t)
                .or_default()
                .extend(chains);
        }
    }

    /// Clears every pending "release" of unwrapped chains that the kernel no longer has.
    pub fn forget_released(&mut self, family: Family, table: Table, chain: &str) {
        if let Some(t) = self.tables[family.index()].get_mut(&table) {
            t.release.remove(chain);
        }
    }

    fn install_defaults(&mut self) -> Result<(), Error> {
        let o = self.options.clone();
        let top = o.filter_top.as_str().to_owned();
        let bottom = o.postrouting_bottom.as_str().to_owned();
        for family in self.families() {
            let mut tables = vec![
                (Table::Filter, vec!["INPUT", "OUTPUT", "FORWARD"]),
                (Table::Raw, vec!["PREROUTING", "OUTPUT"]),
            ];
            if !o.state_less {
                tables.push((
                    Table::Mangle,
                    vec!["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
                ));
            }
            let full_nat = family == Family::V4 && !o.state_less && o.nat;
            tables.push((
                Table::Nat,
                if full_nat {
                    vec!["PREROUTING", "OUTPUT", "POSTROUTING"]
                } else {
                    vec!["PREROUTING"]
                },
            ));
            for (table, builtins) in &tables {
                self.tables[family.index()].entry(*table).or_default();
                for b in builtins {
                    self.add_chain(family, *table, b, true)?;
                }
            }
            // neutron-filter-top at the top of FORWARD and OUTPUT, holding our `local` chain.
            self.add_chain(family, Table::Filter, &top, false)?;
            self.add_chain(family, Table::Filter, "local", true)?;
            for b in ["FORWARD", "OUTPUT"] {
                let jump = format!("-j {top}");
                self.add_rule(
                    family,
                    Table::Filter,
                    RuleSpec {
                        wrap: false,
                        top: true,
                        ..RuleSpec::new(b, &jump)
                    },
                )?;
            }
            for (table, builtins) in &tables {
                for b in builtins {
                    let jump = format!("-j ${b}");
                    self.add_rule(
                        family,
                        *table,
                        RuleSpec {
                            wrap: false,
                            top: true,
                            ..RuleSpec::new(b, &jump)
                        },
                    )?;
                }
            }
            self.add_rule(
                family,
                Table::Filter,
                RuleSpec {
                    wrap: false,
                    ..RuleSpec::new(&top, "-j $local")
                },
            )?;
            if family == Family::V4 && !o.state_less {
                self.add_chain(family, Table::Mangle, "mark", true)?;
                self.add_rule(
                    family,
                    Table::Mangle,
                    RuleSpec {
                        top: true,
                        ..RuleSpec::new("PREROUTING", "-j $mark")
                    },
                )?;
            }
            if full_nat {
                self.add_chain(family, Table::Nat, &bottom, false)?;
                let jump = format!("-j {bottom}");
                self.add_rule(
                    family,
                    Table::Nat,
                    RuleSpec {
                        wrap: false,
                        ..RuleSpec::new("POSTROUTING", &jump)
                    },
                )?;
                self.add_chain(family, Table::Nat, "snat", true)?;
                self.add_chain(family, Table::Nat, "float-snat", true)?;
                let comment = o
                    .comments
                    .then_some("Perform source NAT on outgoing traffic.");
                self.add_rule(
                    family,
                    Table::Nat,
                    RuleSpec {
                        wrap: false,
                        comment,
                        ..RuleSpec::new(&bottom, "-j $snat")
                    },
                )?;
                self.add_rule(family, Table::Nat, RuleSpec::new("snat", "-j $float-snat"))?;
            }
        }
        Ok(())
    }

    fn table_mut(&mut self, family: Family, table: Table) -> Result<&mut DesiredTable, Error> {
        if family == Family::V6 && !self.options.ipv6 {
            return Err(Error::invalid(
                "family",
                "ipv6",
                "IPv6 is disabled (options.ipv6 is false)",
            ));
        }
        self.tables[family.index()].get_mut(&table).ok_or_else(|| {
            Error::invalid(
                "table",
                table.as_str(),
                format!("table {table} is not managed with these options"),
            )
        })
    }

    fn mark(&mut self, family: Family, table: Table, chain: &str) {
        let dirty = self.dirty[family.index()].entry(table).or_default();
        if !dirty.contains(chain) {
            dirty.insert(chain.to_owned());
        }
    }

    /// The kernel name of a chain: `<wrap>-<name>` when wrapped.
    pub fn kernel_chain(&self, name: &str, wrap: bool) -> Result<String, Error> {
        let short = ChainName::new("chain", name)?;
        if wrap {
            self.wrap.wrap_chain("chain", &short)
        } else {
            if self.wrap.strip(name).is_some() {
                return Err(Error::invalid(
                    "chain",
                    name,
                    format!(
                        "names one of this manager's own chains ({}-...): use wrap: true",
                        self.wrap
                    ),
                ));
            }
            Ok(name.to_owned())
        }
    }

    /// Neutron's `add_chain`: a wrapped chain (ours) or an unwrapped shared chain. Idempotent.
    pub fn add_chain(
        &mut self,
        family: Family,
        table: Table,
        name: &str,
        wrap: bool,
    ) -> Result<(), Error> {
        let full = self.kernel_chain(name, wrap)?;
        if !wrap && table.is_builtin(name) {
            return Err(Error::invalid("chain", name, "is a builtin chain"));
        }
        let t = self.table_mut(family, table)?;
        t.release.remove(&full);
        let kind = if wrap {
            ChainKind::Own
        } else {
            ChainKind::Shared
        };
        let entry = t
            .chains
            .entry(full.clone())
            .or_insert_with(|| DesiredChain {
                kind,
                short: name.to_owned(),
                top: Vec::new(),
                bottom: Vec::new(),
            });
        if entry.kind == ChainKind::Foreign {
            entry.kind = kind;
        }
        self.mark(family, table, &full);
        Ok(())
    }

    /// Whether a chain exists in the desired state.
    pub fn has_chain(&self, family: Family, table: Table, name: &str, wrap: bool) -> bool {
        let Ok(full) = self.kernel_chain(name, wrap) else {
            return false;
        };
        self.table(family, table).is_some_and(|t| {
            t.chains
                .get(&full)
                .is_some_and(|c| c.kind != ChainKind::Foreign)
        })
    }

    fn resolve_rule(
        &self,
        family: Family,
        table: Table,
        spec: &RuleSpec<'_>,
    ) -> Result<Resolved, Error> {
        let full = self
            .kernel_chain(spec.chain, spec.wrap)
            .map_err(|e| rename(e, "chain"))?;
        let t = self.table(family, table).ok_or_else(|| {
            Error::invalid(
                "table",
                table.as_str(),
                format!("table {table} is not managed with these options"),
            )
        })?;
        let kind = match t.chains.get(&full) {
            Some(c) => c.kind,
            None if spec.wrap => {
                return Err(Error::UnknownChain {
                    field: "chain".into(),
                    chain: spec.chain.to_owned(),
                    family: family.to_string(),
                    table: table.to_string(),
                })
            }
            // Neutron's LookupError: an unwrapped rule goes into a builtin chain or into a shared
            // chain declared with `add_chain(.., wrap: false)`, never into a chain that exists
            // only in somebody else's rules.
            None if !table.is_builtin(spec.chain) => {
                return Err(Error::invalid(
                    "chain",
                    spec.chain,
                    format!(
                        "a wrap: false rule must go into a builtin chain of {family} table \
                         {table} ({}) or into a declared unwrapped chain (unwrapped_chains)",
                        table.builtin_chains().join(", ")
                    ),
                ))
            }
            None => ChainKind::Foreign,
        };
        if let Some(rule) = self.hinted(family, table, t, &full, kind, spec) {
            return Ok((full, kind, rule));
        }
        let expand = |name: &str| -> Result<String, Error> {
            let short = ChainName::new("rule", name)?;
            let target = self.wrap.wrap_chain("rule", &short)?;
            match t.chains.get(&target) {
                Some(c) if c.kind == ChainKind::Own => Ok(target),
                _ => Err(Error::invalid(
                    "rule",
                    &format!("${name}"),
                    format!("jumps to {target}, which is not a chain of {family} table {table}"),
                )),
            }
        };
        let parsed = ParsedRule::parse("rule", family, spec.rule, &expand)?;
        if let Some(target) = &parsed.target {
            if self.wrap.strip(target).is_some()
                && !t
                    .chains
                    .get(target)
                    .is_some_and(|c| c.kind == ChainKind::Own)
            {
                return Err(Error::invalid(
                    "rule",
                    spec.rule,
                    format!("jumps to {target}, which is not a chain of {family} table {table}"),
                ));
            }
        }
        let comment = spec
            .comment
            .map(|c| Comment::new("comment", c))
            .transpose()?;
        let tag = spec.tag.map(|t| Tag::new("tag", t)).transpose()?;
        let identity = parsed.identity();
        let hash = rule_hash(
            table,
            &full,
            &identity,
            comment.as_ref().map(Comment::as_str),
            spec.top,
        );
        let marked = kind != ChainKind::Own || !parsed.is_canonical();
        let marker = marked.then(|| marker_text(self.wrap.as_str(), hash));
        let comments: Vec<&str> = comment
            .as_ref()
            .map(Comment::as_str)
            .into_iter()
            .chain(marker.as_deref())
            .collect();
        let rule = DesiredRule {
            // Without comments the rule is written as its identity.
            spec: if comments.is_empty() {
                identity
            } else {
                parsed.render(&comments)
            },
            hash,
            marked,
            target: parsed.target.clone(),
            origin: Arc::new(Origin {
                chain: spec.chain.to_owned(),
                rule: spec.rule.to_owned(),
            }),
            comment,
            tag,
            refs: 1,
        };
        Ok((full, kind, rule))
    }

    /// Neutron's `add_rule`. Adding the same rule again counts a reference (and one
    /// [`IptablesModel::remove_rule`] leaves it installed) instead of silently collapsing.
    pub fn add_rule(
        &mut self,
        family: Family,
        table: Table,
        spec: RuleSpec<'_>,
    ) -> Result<(), Error> {
        let resolved = self.resolve_rule(family, table, &spec)?;
        self.insert_rule(family, table, &spec, resolved, None)
    }

    /// [`IptablesModel::add_rule`] for many rules of one table, in order, with one result per
    /// rule. The same as adding them one by one, but many rules are read, checked and
    /// canonicalised on several threads (that part depends only on the chains, which rules do
    /// not change); they are then inserted in order.
    pub fn add_rules(
        &mut self,
        family: Family,
        table: Table,
        specs: &[RuleSpec<'_>],
    ) -> Vec<Result<(), Error>> {
        self.add_rules_on(family, table, specs, default_threads())
    }

    /// [`IptablesModel::add_rules`] on at most `threads` threads (for a caller that knows the
    /// other cores are busy, e.g. with an `iptables-save` it waits for anyway).
    pub fn add_rules_on(
        &mut self,
        family: Family,
        table: Table,
        specs: &[RuleSpec<'_>],
        threads: usize,
    ) -> Vec<Result<(), Error>> {
        self.add_rules_helped(family, table, specs, Help::threads(threads))
    }

    /// [`IptablesModel::add_rules_on`] with `help`: `standby` threads join in once released
    /// (see [`Standby`]: for a caller whose other threads are busy for a while, and then
    /// not), and a [`Feed`] that wants this table gets its rules as restore lines.
    pub fn add_rules_helped(
        &mut self,
        family: Family,
        table: Table,
        specs: &[RuleSpec<'_>],
        help: Help<'_>,
    ) -> Vec<Result<(), Error>> {
        /// Below this, one thread does it faster than starting others.
        const PARALLEL_RULES: usize = 2048;
        /// Rules per piece of work: threads take the next piece as they finish one, so one
        /// that starts late (or runs on a busier core) still takes its share.
        const CHUNK: usize = 256;
        let this = &*self;
        let feed = help.feed.filter(|f| f.table(this, family, table, specs));
        let resolve = |index: usize, chunk: &[RuleSpec<'_>]| -> Vec<Result<Resolved, Error>> {
            let resolved: Vec<_> = chunk
                .iter()
                .map(|spec| this.resolve_rule(family, table, spec))
                .collect();
            if let Some(feed) = feed {
                let mut text = String::new();
                for (spec, r) in chunk.iter().zip(&resolved) {
                    if let Ok((full, _, rule)) = r {
                        if spec.wrap && !spec.top && feed.takes(full) {
                            Op::render_append(&mut text, full, &rule.spec);
                            text.push('\n');
                        }
                    }
                }
                feed.lines(index, text);
            }
            resolved
        };
        let big = specs.len() >= PARALLEL_RULES;
        let helpers = if big {
            help.threads.saturating_sub(1)
        } else {
            0
        };
        let standby = help.standby.filter(|s| big && s.helpers > 0);
        let resolved: Vec<Result<Resolved, Error>> = if helpers == 0 && standby.is_none() {
            resolve(0, specs)
        } else {
            let next = std::sync::atomic::AtomicUsize::new(0);
            let work = || {
                let mut done = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let start = i.saturating_mul(CHUNK);
                    if start >= specs.len() {
                        return done;
                    }
                    done.push((i, resolve(i, &specs[start..specs.len().min(start + CHUNK)])));
                }
            };
            let finished = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|s| {
                let mut handles: Vec<_> = (0..helpers).map(|_| s.spawn(work)).collect();
                if let Some(standby) = standby {
                    handles.extend((0..standby.helpers).map(|_| {
                        s.spawn(|| {
                            if standby.wait(&finished) {
                                work()
                            } else {
                                Vec::new()
                            }
                        })
                    }));
                }
                let mut parts = work();
                if let Some(standby) = standby {
                    standby.finish(&finished);
                }
                for h in handles {
                    parts.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
                }
                parts.sort_unstable_by_key(|(i, _)| *i);
                parts.into_iter().flat_map(|(_, r)| r).collect()
            })
        };
        // The hashes of each chain's rules, so that finding an earlier copy of each new rule
        // is not a walk over the chain (quadratic in a chain of tens of thousands of rules).
        let mut known = Known::new();
        specs
            .iter()
            .zip(resolved)
            .map(|(spec, r)| self.insert_rule(family, table, spec, r?, Some(&mut known)))
            .collect()
    }

    /// Adds a resolved rule; `known` (for many rules at once) indexes the hashes of the chains'
    /// rules, else the chain is searched.
    fn insert_rule(
        &mut self,
        family: Family,
        table: Table,
        spec: &RuleSpec<'_>,
        (full, kind, rule): Resolved,
        known: Option<&mut Known>,
    ) -> Result<(), Error> {
        let t = self.table_mut(family, table)?;
        let chain = t
            .chains
            .entry(full.clone())
            .or_insert_with(|| DesiredChain {
                kind,
                short: spec.chain.to_owned(),
                top: Vec::new(),
                bottom: Vec::new(),
            });
        // Whether the chain may hold a copy: not if the rule's hash is new to it.
        let copy = match known {
            None => true,
            Some(known) => match known.get_mut(full.as_str()) {
                Some(hashes) => !hashes.insert(rule.hash),
                None => {
                    let mut hashes: HashSet<u64, Prehashed> =
                        chain.rules().map(|r| r.hash).collect();
                    let copy = !hashes.insert(rule.hash);
                    known.insert(full.clone(), hashes);
                    copy
                }
            },
        };
        if let Some(existing) = chain
            .all_mut()
            .flat_map(|v| v.iter_mut())
            .find(|r| copy && r.hash == rule.hash)
        {
            existing.refs += 1;
            return Ok(());
        }
        if spec.top {
            &mut chain.top
        } else {
            &mut chain.bottom
        }
        .push(rule);
        self.mark(family, table, &full);
        Ok(())
    }

    /// Neutron's `remove_rule`: drops one reference of the rule (matched on chain, text and
    /// placement, and comment when given). Returns whether it was found.
    pub fn remove_rule(
        &mut self,
        family: Family,
        table: Table,
        spec: RuleSpec<'_>,
    ) -> Result<bool, Error> {
        let (full, _, rule) = self.resolve_rule(family, table, &spec)?;
        let t = self.table_mut(family, table)?;
        let Some(chain) = t.chains.get_mut(&full) else {
            return Ok(false);
        };
        let list = if spec.top {
            &mut chain.top
        } else {
            &mut chain.bottom
        };
        let identity = |r: &DesiredRule| (r.origin.rule.clone(), r.comment.clone());
        let pos = list.iter().position(|r| r.hash == rule.hash).or_else(|| {
            spec.comment
                .is_none()
                .then(|| list.iter().position(|r| identity(r).0 == rule.origin.rule))
                .flatten()
        });
        let Some(pos) = pos else { return Ok(false) };
        list[pos].refs -= 1;
        if list[pos].refs == 0 {
            list.remove(pos);
        }
        let foreign_empty =
            chain.kind == ChainKind::Foreign && chain.top.is_empty() && chain.bottom.is_empty();
        if foreign_empty {
            t.chains.remove(&full);
        }
        self.mark(family, table, &full);
        Ok(true)
    }

    /// Neutron's `remove_chain`, with exact cascading: the chain, its rules, and every rule of
    /// ours whose target is exactly this chain. A removed unwrapped chain is deleted from the
    /// kernel once nothing uses it. Returns whether the chain existed.
    pub fn remove_chain(
        &mut self,
        family: Family,
        table: Table,
        name: &str,
        wrap: bool,
    ) -> Result<bool, Error> {
        let full = self.kernel_chain(name, wrap)?;
        let t = self.table_mut(family, table)?;
        let existed = t.chains.remove(&full).is_some();
        let mut touched = vec![full.clone()];
        for (cname, chain) in t.chains.iter_mut() {
            let before = chain.top.len() + chain.bottom.len();
            for list in chain.all_mut() {
                list.retain(|r| r.target.as_deref() != Some(full.as_str()));
            }
            if chain.top.len() + chain.bottom.len() != before {
                touched.push(cname.clone());
            }
        }
        t.chains.retain(|_, c| {
            c.kind != ChainKind::Foreign || !(c.top.is_empty() && c.bottom.is_empty())
        });
        if !wrap && existed {
            t.release.insert(full);
        }
        for c in touched {
            self.mark(family, table, &c);
        }
        Ok(existed)
    }

    /// Neutron's `empty_chain`: removes every rule of ours in the chain, keeps the chain.
    pub fn empty_chain(
        &mut self,
        family: Family,
        table: Table,
        name: &str,
        wrap: bool,
    ) -> Result<(), Error> {
        let full = self.kernel_chain(name, wrap)?;
        let t = self.table_mut(family, table)?;
        if let Some(c) = t.chains.get_mut(&full) {
            c.top.clear();
            c.bottom.clear();
        }
        self.mark(family, table, &full);
        Ok(())
    }

    /// Neutron's `clear_rules_by_tag`: removes every rule with this tag, in every table.
    pub fn clear_rules_by_tag(&mut self, tag: &str) {
        let mut touched = Vec::new();
        for family in Family::ALL {
            for (table, t) in self.tables[family.index()].iter_mut() {
                for (name, chain) in t.chains.iter_mut() {
                    let before = chain.top.len() + chain.bottom.len();
                    for list in chain.all_mut() {
                        list.retain(|r| r.tag.as_ref().map(Tag::as_str) != Some(tag));
                    }
                    if before != chain.top.len() + chain.bottom.len() {
                        touched.push((family, *table, name.clone()));
                    }
                }
            }
        }
        for (f, t, c) in touched {
            self.mark(f, t, &c);
        }
    }

    /// The rules of a chain as they will be written (Neutron's `get_chain`), or `None`.
    pub fn rules(
        &self,
        family: Family,
        table: Table,
        name: &str,
        wrap: bool,
    ) -> Option<Vec<String>> {
        let full = self.kernel_chain(name, wrap).ok()?;
        let c = self.table(family, table)?.chains.get(&full)?;
        Some(c.rules().map(|r| r.spec.clone()).collect())
    }

    /// Neutron's `is_chain_empty`.
    pub fn is_chain_empty(&self, family: Family, table: Table, name: &str, wrap: bool) -> bool {
        self.rules(family, table, name, wrap)
            .is_none_or(|r| r.is_empty())
    }

    /// Takes `other`'s rules (what [`IptablesModel::same_rules`] compares), marking dirty
    /// only the chains that differ: chains changed, added or gone, and releases begun or
    /// ended; what was dirty stays dirty. So the next plan compares the chains an edit
    /// touched, not every chain. With another wrap name, other options or other tables, the
    /// whole of `other` is taken and, as [`IptablesModel::mark_all_dirty`] does, every chain
    /// marked (with those of this model in the tables both have). Returns whether anything
    /// differed.
    pub fn update_from(&mut self, other: &IptablesModel) -> bool {
        let same_tables = (0..2).all(|i| self.tables[i].keys().eq(other.tables[i].keys()));
        if self.wrap != other.wrap || self.options != other.options || !same_tables {
            let old = std::mem::replace(&mut self.tables, other.tables.clone());
            self.wrap = other.wrap.clone();
            self.options = other.options.clone();
            self.mark_all_dirty();
            for family in Family::ALL {
                for (table, t) in &old[family.index()] {
                    if self.tables[family.index()].contains_key(table) {
                        for name in t.chains.keys().chain(t.release.iter()) {
                            self.mark(family, *table, name);
                        }
                    }
                }
            }
            return true;
        }
        let mut changed = false;
        for family in Family::ALL {
            let i = family.index();
            for (table, new) in &other.tables[i] {
                let old = self.tables[i].get_mut(table).expect("same tables");
                if old == new {
                    continue;
                }
                changed = true;
                let mut marks: Vec<String> = Vec::new();
                for (name, chain) in &new.chains {
                    if old.chains.get(name) != Some(chain) {
                        old.chains.insert(name.clone(), chain.clone());
                        marks.push(name.clone());
                    }
                }
                old.chains.retain(|name, _| {
                    let keep = new.chains.contains_key(name);
                    if !keep {
                        marks.push(name.clone());
                    }
                    keep
                });
                if old.release != new.release {
                    marks.extend(old.release.symmetric_difference(&new.release).cloned());
                    old.release = new.release.clone();
                }
                for name in marks {
                    self.mark(family, *table, &name);
                }
            }
        }
        changed
    }

    /// Marks every chain of every table dirty (used to force a full plan).
    pub fn mark_all_dirty(&mut self) {
        for family in Family::ALL {
            let names: Vec<(Table, String)> = self.tables[family.index()]
                .iter()
                .flat_map(|(t, d)| {
                    d.chains
                        .keys()
                        .chain(d.release.iter())
                        .map(move |c| (*t, c.clone()))
                })
                .collect();
            for (t, c) in names {
                self.mark(family, t, &c);
            }
        }
    }
}

fn rename(e: Error, field: &str) -> Error {
    match e {
        Error::Invalid { value, reason, .. } => Error::Invalid {
            field: field.to_owned(),
            value,
            reason,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> IptablesModel {
        IptablesModel::new(WrapName::new("w").unwrap(), ModelOptions::default())
    }

    /// A router-like set of rules: `$` jumps, top, comment and tag, an unwrapped rule, both
    /// families, and `extra` (the rule that changes between two versions).
    fn hintable(m: &mut IptablesModel, with_b: bool, extra: &str) -> Result<(), Error> {
        m.add_chain(Family::V4, Table::Filter, "a", true)?;
        if with_b {
            m.add_chain(Family::V4, Table::Filter, "b", true)?;
            m.add_chain(Family::V6, Table::Filter, "b", true)?;
        }
        // `$b` as a word that is not the target (an interface name here), then as the target.
        m.add_rule(
            Family::V4,
            Table::Filter,
            RuleSpec::new("a", "-i $b -j ACCEPT"),
        )?;
        m.add_rule(
            Family::V4,
            Table::Filter,
            RuleSpec::new("a", "-s 192.0.2.1/32 -j $b"),
        )?;
        m.add_rule(
            Family::V4,
            Table::Filter,
            RuleSpec {
                top: true,
                comment: Some("ssh"),
                tag: Some("t"),
                ..RuleSpec::new("a", "-p tcp --dport 22 -j ACCEPT")
            },
        )?;
        m.add_rule(
            Family::V4,
            Table::Filter,
            RuleSpec {
                wrap: false,
                ..RuleSpec::new("INPUT", "-j $a")
            },
        )?;
        m.add_rule(
            Family::V4,
            Table::Filter,
            RuleSpec::new("a", "-p udp -j $a-x"),
        )
        .err();
        m.add_rule(Family::V4, Table::Filter, RuleSpec::new("a", extra))?;
        if with_b {
            m.add_rule(
                Family::V6,
                Table::Filter,
                RuleSpec::new("b", "-s 2001:db8::1/128 -j DROP"),
            )?;
        }
        Ok(())
    }

    fn origins(m: &IptablesModel) -> Vec<Arc<Origin>> {
        Family::ALL
            .iter()
            .filter_map(|&f| m.table(f, Table::Filter))
            .flat_map(|t| t.chains.values())
            .flat_map(|c| c.rules())
            .map(|r| Arc::clone(&r.origin))
            .collect()
    }

    fn dirty_chains(m: &IptablesModel, family: Family) -> Vec<(Table, Vec<String>)> {
        m.dirty(family)
            .iter()
            .map(|(t, c)| (*t, c.iter().cloned().collect()))
            .collect()
    }

    fn clean(m: &mut IptablesModel) {
        for f in Family::ALL {
            m.take_dirty(f);
        }
    }

    #[test]
    fn an_update_marks_the_chains_that_differ_and_only_them() {
        let mut kept = model();
        hintable(&mut kept, true, "-s 192.0.2.9/32 -j DROP").unwrap();
        clean(&mut kept);
        let same = {
            let mut m = model();
            hintable(&mut m, true, "-s 192.0.2.9/32 -j DROP").unwrap();
            m
        };
        assert!(!kept.update_from(&same));
        assert!(Family::ALL.iter().all(|&f| kept.dirty(f).is_empty()));

        // One rule of `a` changed.
        let edited = {
            let mut m = model();
            hintable(&mut m, true, "-s 192.0.2.10/32 -j DROP").unwrap();
            m
        };
        assert!(kept.update_from(&edited));
        assert!(kept.same_rules(&edited));
        assert_eq!(
            dirty_chains(&kept, Family::V4),
            vec![(Table::Filter, vec!["w-a".to_owned()])]
        );
        assert!(kept.dirty(Family::V6).is_empty());

        // What was dirty stays dirty; a chain gone is marked (its plan deletes it).
        let mut with_c = edited.clone();
        with_c
            .add_chain(Family::V6, Table::Filter, "c", true)
            .unwrap();
        assert!(kept.update_from(&with_c));
        assert!(kept.update_from(&edited));
        assert!(kept.same_rules(&edited));
        assert_eq!(
            dirty_chains(&kept, Family::V4),
            vec![(Table::Filter, vec!["w-a".to_owned()])]
        );
        assert_eq!(
            dirty_chains(&kept, Family::V6),
            vec![(Table::Filter, vec!["w-c".to_owned()])]
        );

        // Other options (no IPv6, no mangle): all of it taken, every chain of both marked.
        clean(&mut kept);
        let mut other = IptablesModel::new(
            WrapName::new("w").unwrap(),
            ModelOptions {
                ipv6: false,
                state_less: true,
                ..ModelOptions::default()
            },
        );
        other
            .add_chain(Family::V4, Table::Filter, "a", true)
            .unwrap();
        assert!(kept.update_from(&other));
        assert!(kept.same_rules(&other));
        let marked: Vec<String> = kept.dirty(Family::V4)[&Table::Filter]
            .iter()
            .cloned()
            .collect();
        assert!(marked.contains(&"w-a".to_owned()), "{marked:?}");
        assert!(marked.contains(&"w-INPUT".to_owned()), "{marked:?}");
    }

    /// Hints give the model reading gives, and are taken only for the same rules.
    #[test]
    fn hinted_rules_are_what_reading_gives_and_only_the_same_rules_are_taken() {
        let mut before = model();
        hintable(&mut before, true, "-s 192.0.2.9/32 -j DROP").unwrap();
        let hints = Arc::new(before.hints());
        let all: usize = Family::ALL
            .iter()
            .flat_map(|&f| before.tables_of(f).into_iter().map(move |t| (f, t)))
            .filter_map(|(f, t)| before.table(f, t))
            .flat_map(|t| t.chains.values())
            .map(|c| c.rules().count())
            .sum();
        assert_eq!(
            hints.len(),
            all,
            "every rule is hinted, Neutron's defaults too"
        );
        let mut read = model();
        hintable(&mut read, true, "-s 192.0.2.10/32 -j DROP").unwrap();
        let mut hinted = model();
        hinted.use_hints(Arc::clone(&hints));
        hintable(&mut hinted, true, "-s 192.0.2.10/32 -j DROP").unwrap();
        hinted.drop_hints();
        assert!(hinted.same_rules(&read));
        assert_eq!(hinted.digest(), read.digest());
        // The five rules unchanged were taken (their origin is the earlier model's), the
        // new one was read.
        let old = origins(&before);
        let taken: Vec<String> = origins(&hinted)
            .iter()
            .filter(|o| old.iter().any(|x| Arc::ptr_eq(x, o)))
            .map(|o| o.rule.clone())
            .collect();
        assert_eq!(taken.len(), 5, "{taken:?}");
        assert!(!taken.iter().any(|r| r.contains("192.0.2.10")));
        // Another wrap name: not taken.
        let mut other = IptablesModel::new(WrapName::new("v").unwrap(), ModelOptions::default());
        other.use_hints(Arc::clone(&hints));
        hintable(&mut other, true, "-s 192.0.2.9/32 -j DROP").unwrap();
        assert!(!origins(&other)
            .iter()
            .any(|o| old.iter().any(|x| Arc::ptr_eq(x, o))));
    }

    /// A hinted rule whose `$` jump is no longer a chain of ours fails as reading fails.
    #[test]
    fn a_hint_whose_jump_is_gone_is_not_taken() {
        let mut before = model();
        hintable(&mut before, true, "-j DROP").unwrap();
        let mut read = model();
        let want = hintable(&mut read, false, "-j DROP").unwrap_err();
        let mut hinted = model();
        hinted.use_hints(Arc::new(before.hints()));
        let got = hintable(&mut hinted, false, "-j DROP").unwrap_err();
        assert_eq!(got.to_string(), want.to_string());
        // Refused at the same rule: the first one with `$b`, nothing of it added.
        assert!(hinted.same_rules(&read));
    }

    /// Many rules added at once count copies (of each other, and of rules already there) as
    /// adding them one by one does.
    #[test]
    fn many_rules_at_once_count_copies_as_one_by_one() {
        let texts = [
            "-s 192.0.2.1/32 -j ACCEPT",
            "-s 192.0.2.2/32 -j ACCEPT",
            "-s 192.0.2.1/32 -j ACCEPT",
            "-s 192.0.2.3/32 -j ACCEPT",
        ];
        let (mut one, mut many) = (model(), model());
        for m in [&mut one, &mut many] {
            m.add_chain(Family::V4, Table::Filter, "c", true).unwrap();
            m.add_rule(Family::V4, Table::Filter, RuleSpec::new("c", texts[1]))
                .unwrap();
        }
        for t in texts {
            one.add_rule(Family::V4, Table::Filter, RuleSpec::new("c", t))
                .unwrap();
        }
        let specs: Vec<RuleSpec<'_>> = texts.iter().map(|t| RuleSpec::new("c", t)).collect();
        assert!(many
            .add_rules(Family::V4, Table::Filter, &specs)
            .iter()
            .all(Result::is_ok));
        assert_eq!(
            one.table(Family::V4, Table::Filter),
            many.table(Family::V4, Table::Filter)
        );
        let refs: Vec<u32> = many.table(Family::V4, Table::Filter).unwrap().chains["w-c"]
            .rules()
            .map(|r| r.refs)
            .collect();
        assert_eq!(refs, [2, 2, 1]);
    }

    /// A feed that wants chain `w-a` only, recording its pieces.
    struct Recording {
        pieces: std::sync::Mutex<Vec<(usize, String)>>,
    }

    impl Feed for Recording {
        fn table(&self, _: &IptablesModel, _: Family, t: Table, _: &[RuleSpec<'_>]) -> bool {
            t == Table::Filter
        }
        fn takes(&self, chain: &str) -> bool {
            chain == "w-a"
        }
        fn lines(&self, index: usize, text: String) {
            self.pieces.lock().unwrap().push((index, text));
        }
    }

    /// A feed gets, over its pieces in index order, exactly the appended rules of the chains
    /// it takes (never a top rule, a rule of another chain, or one that does not read), as
    /// the plan writes them; on one thread or several.
    #[test]
    fn a_feed_gets_the_appended_rules_of_its_chains_in_order() {
        let texts: Vec<String> = (0..5000)
            .map(|i| {
                format!(
                    "-s 192.0.2.{}/32 -p tcp -m tcp --dport {} -j ACCEPT",
                    i % 256,
                    1024 + i / 256
                )
            })
            .collect();
        for threads in [1, 2, 3] {
            let mut m = model();
            for c in ["a", "b"] {
                m.add_chain(Family::V4, Table::Filter, c, true).unwrap();
            }
            let specs: Vec<RuleSpec<'_>> = texts
                .iter()
                .enumerate()
                .map(|(i, t)| RuleSpec {
                    top: i % 1000 == 7,
                    ..RuleSpec::new(
                        if i % 3 == 0 { "b" } else { "a" },
                        if i == 4321 { "-j NOPE" } else { t },
                    )
                })
                .collect();
            let feed = Recording {
                pieces: std::sync::Mutex::new(Vec::new()),
            };
            let help = Help {
                threads,
                standby: None,
                feed: Some(&feed),
            };
            let results = m.add_rules_helped(Family::V4, Table::Filter, &specs, help);
            assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
            let mut pieces = feed.pieces.into_inner().unwrap();
            pieces.sort_by_key(|(i, _)| *i);
            let indices: Vec<usize> = pieces.iter().map(|(i, _)| *i).collect();
            assert_eq!(indices, (0..indices.len()).collect::<Vec<_>>(), "{threads}");
            let fed: String = pieces.into_iter().map(|(_, t)| t).collect();
            let chain = &m.table(Family::V4, Table::Filter).unwrap().chains["w-a"];
            let want: String = chain
                .bottom
                .iter()
                .map(|r| format!("{}\n", Op::Append("w-a".into(), r.spec.clone()).render()))
                .collect();
            assert_eq!(fed, want, "{threads}");
            assert!(!chain.top.is_empty());
        }
    }

    /// Many rules read on several threads, with standby threads released at once, part-way
    /// or never: the same model and the same errors, in order, as one thread.
    #[test]
    fn rules_read_with_helpers_make_the_same_model() {
        let texts: Vec<String> = (0..5000)
            .map(|i| match i % 997 {
                // A few invalid rules, to check the errors keep their places.
                13 => "-j $nosuch".to_owned(),
                _ => format!(
                    "-s 192.0.2.{}/32 -p tcp -m tcp --dport {} -j ACCEPT",
                    i % 256,
                    1024 + i / 256
                ),
            })
            .collect();
        let specs: Vec<RuleSpec<'_>> = texts.iter().map(|t| RuleSpec::new("c", t)).collect();
        let build = |threads: usize, standby: Option<&Standby>| {
            let mut m = model();
            m.add_chain(Family::V4, Table::Filter, "c", true).unwrap();
            let errors: Vec<String> = m
                .add_rules_helped(
                    Family::V4,
                    Table::Filter,
                    &specs,
                    Help {
                        threads,
                        standby,
                        feed: None,
                    },
                )
                .into_iter()
                .enumerate()
                .filter_map(|(i, r)| r.err().map(|e| format!("{i}: {e}")))
                .collect();
            (m.digest(), errors)
        };
        let one = build(1, None);
        assert_eq!(one.1.len(), 6, "{:?}", one.1);
        assert_eq!(build(3, None), one);
        let never = Standby::new(1);
        assert_eq!(build(1, Some(&never)), one);
        let released = Standby::new(2);
        released.release();
        assert_eq!(build(1, Some(&released)), one);
        let later = Standby::new(1);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(2));
                later.release();
            });
            assert_eq!(build(1, Some(&later)), one);
        });
    }

    #[test]
    fn neutron_defaults() {
        let m = model();
        let f = m.table(Family::V4, Table::Filter).unwrap();
        let names: Vec<&str> = f.chains.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "FORWARD",
                "INPUT",
                "OUTPUT",
                "neutron-filter-top",
                "w-FORWARD",
                "w-INPUT",
                "w-OUTPUT",
                "w-local"
            ]
        );
        let fwd: Vec<&str> = f.chains["FORWARD"]
            .rules()
            .map(|r| r.spec.as_str())
            .collect();
        assert_eq!(fwd.len(), 2);
        assert!(
            fwd[0].starts_with("-m comment --comment \"l3agent:w:")
                && fwd[0].ends_with("-j neutron-filter-top"),
            "{fwd:?}"
        );
        assert!(fwd[1].ends_with("-j w-FORWARD"));
        let nat = m.table(Family::V4, Table::Nat).unwrap();
        assert_eq!(
            m.rules(Family::V4, Table::Nat, "snat", true).unwrap(),
            ["-j w-float-snat"]
        );
        let bottom: Vec<&str> = nat.chains["neutron-postrouting-bottom"]
            .rules()
            .map(|r| r.spec.as_str())
            .collect();
        assert!(bottom[0].starts_with("-m comment --comment \"Perform source NAT on outgoing traffic.\" -m comment --comment \"l3agent:w:"), "{bottom:?}");
        // IPv6 nat wraps PREROUTING only; mangle has the mark chain only in IPv4.
        assert_eq!(
            m.table(Family::V6, Table::Nat)
                .unwrap()
                .chains
                .keys()
                .collect::<Vec<_>>(),
            ["PREROUTING", "w-PREROUTING"]
        );
        assert!(m.has_chain(Family::V4, Table::Mangle, "mark", true));
        assert!(!m.has_chain(Family::V6, Table::Mangle, "mark", true));
    }

    #[test]
    fn state_less_and_no_nat() {
        let m = IptablesModel::new(
            WrapName::default(),
            ModelOptions {
                state_less: true,
                ..ModelOptions::default()
            },
        );
        assert!(m.table(Family::V4, Table::Mangle).is_none());
        assert!(!m.has_chain(Family::V4, Table::Nat, "POSTROUTING", true));
        let m = IptablesModel::new(
            WrapName::default(),
            ModelOptions {
                nat: false,
                ..ModelOptions::default()
            },
        );
        assert!(m.table(Family::V4, Table::Mangle).is_some());
        assert!(!m.has_chain(Family::V4, Table::Nat, "snat", true));
    }

    #[test]
    fn duplicates_are_counted_not_collapsed() {
        let mut m = model();
        let r = RuleSpec::new("INPUT", "-j ACCEPT");
        m.add_rule(Family::V4, Table::Filter, r).unwrap();
        m.add_rule(Family::V4, Table::Filter, r).unwrap();
        assert!(m.remove_rule(Family::V4, Table::Filter, r).unwrap());
        assert_eq!(
            m.rules(Family::V4, Table::Filter, "INPUT", true)
                .unwrap()
                .len(),
            1
        );
        assert!(m.remove_rule(Family::V4, Table::Filter, r).unwrap());
        assert!(m.is_chain_empty(Family::V4, Table::Filter, "INPUT", true));
        assert!(!m.remove_rule(Family::V4, Table::Filter, r).unwrap());
    }

    #[test]
    fn remove_chain_cascades_exactly() {
        let mut m = model();
        m.add_chain(Family::V4, Table::Nat, "float", true).unwrap();
        m.add_rule(
            Family::V4,
            Table::Nat,
            RuleSpec::new("PREROUTING", "-j $float"),
        )
        .unwrap();
        assert!(m
            .remove_chain(Family::V4, Table::Nat, "float", true)
            .unwrap());
        // B-03: removing `float` must not remove the jump to `float-snat`.
        assert_eq!(
            m.rules(Family::V4, Table::Nat, "snat", true).unwrap(),
            ["-j w-float-snat"]
        );
        assert!(m.is_chain_empty(Family::V4, Table::Nat, "PREROUTING", true));
    }

    #[test]
    fn unknown_chains_and_bad_jumps() {
        let mut m = model();
        let e = m
            .add_rule(
                Family::V4,
                Table::Filter,
                RuleSpec::new("nope", "-j ACCEPT"),
            )
            .unwrap_err();
        assert!(matches!(e, Error::UnknownChain { .. }), "{e}");
        let e = m
            .add_rule(
                Family::V4,
                Table::Filter,
                RuleSpec::new("INPUT", "-j $nope"),
            )
            .unwrap_err();
        assert!(e.to_string().contains("w-nope"), "{e}");
        let e = m
            .add_rule(
                Family::V4,
                Table::Filter,
                RuleSpec::new("INPUT", "-j w-nope"),
            )
            .unwrap_err();
        assert!(e.to_string().contains("w-nope"), "{e}");
        let e = m
            .add_chain(Family::V4, Table::Filter, "w-x", false)
            .unwrap_err();
        assert!(e.to_string().contains("wrap: true"), "{e}");
    }

    #[test]
    fn tags() {
        let mut m = model();
        m.add_rule(
            Family::V4,
            Table::Nat,
            RuleSpec {
                tag: Some("floating_ip"),
                ..RuleSpec::new(
                    "PREROUTING",
                    "-d 203.0.113.5/32 -j DNAT --to-destination 192.0.2.10",
                )
            },
        )
        .unwrap();
        m.take_dirty(Family::V4);
        m.clear_rules_by_tag("floating_ip");
        assert!(m.is_chain_empty(Family::V4, Table::Nat, "PREROUTING", true));
        assert!(m.dirty(Family::V4)[&Table::Nat].contains("w-PREROUTING"));
    }

    #[test]
    fn wrap_false_rules_go_only_into_builtin_or_declared_shared_chains() {
        let mut m = model();
        let unwrapped = |chain| RuleSpec {
            wrap: false,
            ..RuleSpec::new(chain, "-j ACCEPT")
        };
        m.add_rule(Family::V4, Table::Filter, unwrapped("INPUT"))
            .unwrap();
        m.add_rule(Family::V4, Table::Nat, unwrapped("POSTROUTING"))
            .unwrap();
        m.add_rule(Family::V4, Table::Filter, unwrapped("neutron-filter-top"))
            .unwrap();
        let e = m
            .add_rule(Family::V4, Table::Filter, unwrapped("DOCKER"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("chain: invalid value \"DOCKER\": a wrap: false rule must go into a builtin chain of ipv4 table filter (INPUT, FORWARD, OUTPUT) or into a declared unwrapped chain"),
            "{e}"
        );
        // A builtin chain of another table is not one of this table.
        assert!(m
            .add_rule(Family::V4, Table::Filter, unwrapped("PREROUTING"))
            .is_err());
        m.add_chain(Family::V4, Table::Filter, "shared-x", false)
            .unwrap();
        m.add_rule(Family::V4, Table::Filter, unwrapped("shared-x"))
            .unwrap();
    }

    #[test]
    fn invalid_shared_chain_options_are_errors_not_panics() {
        let with = |top: &str, bottom: &str| ModelOptions {
            filter_top: ChainName::new("t", top).unwrap(),
            postrouting_bottom: ChainName::new("b", bottom).unwrap(),
            ..ModelOptions::default()
        };
        let wrap = || WrapName::new("w").unwrap();
        for (top, bottom, field, why) in [
            (
                "INPUT",
                "neutron-postrouting-bottom",
                "filter_top_chain",
                "builtin",
            ),
            (
                "FORWARD",
                "neutron-postrouting-bottom",
                "filter_top_chain",
                "builtin",
            ),
            (
                "PREROUTING",
                "neutron-postrouting-bottom",
                "filter_top_chain",
                "builtin",
            ),
            (
                "w-top",
                "neutron-postrouting-bottom",
                "filter_top_chain",
                "own chains",
            ),
            (
                "MYTOP",
                "neutron-postrouting-bottom",
                "filter_top_chain",
                "lower-case",
            ),
            (
                "neutron-filter-top",
                "POSTROUTING",
                "postrouting_bottom_chain",
                "builtin",
            ),
            (
                "neutron-filter-top",
                "OUTPUT",
                "postrouting_bottom_chain",
                "builtin",
            ),
        ] {
            let e = IptablesModel::try_new(wrap(), with(top, bottom))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(field) && e.contains(why),
                "{top}/{bottom}: {e}"
            );
        }
        let m = IptablesModel::try_new(wrap(), with("my-top", "my.bottom")).unwrap();
        assert!(m.has_chain(Family::V4, Table::Filter, "my-top", false));
        assert!(m.has_chain(Family::V4, Table::Nat, "my.bottom", false));
    }
}

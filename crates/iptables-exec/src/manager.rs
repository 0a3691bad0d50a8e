//! [`Manager`]: one long-lived iptables manager per network namespace, the Rust counterpart of
//! Neutron's `IptablesManager`. Mutate the desired state through [`Manager::model_mut`] (or
//! batch several changes with [`Manager::defer_apply`]), then [`Manager::apply`].
//!
//! The committed state is kept in memory: an apply with nothing changed spawns no process, and
//! an apply after a change plans only the chains that changed, without reading the kernel. The
//! kernel is read (`iptables-save`) at the first apply, after any failure, and after
//! [`Manager::refresh`]; that full comparison also repairs drift (a flushed chain, a deleted
//! jump, an edited rule).

use std::collections::BTreeSet;

use l3agent_iptables::kernel::KernelState;
use l3agent_iptables::plan::{plan_family, revert_table, Plan};
use l3agent_iptables::restore_error::failing_line;
use l3agent_iptables::{Family, IptablesModel, Table};
use tracing::{debug, info, warn};

use crate::error::{ApplyError, ExecError, RestoreError, Rollback};
use crate::runner::{ProcessRunner, Runner};
use crate::stream::{Streamed, Writer};

/// Plans with more operations than this simulate their effect in parallel with the restore.
const PARALLEL_SIMULATION_OPS: usize = 2000;

/// Frees large values on another thread, off the apply's critical path.
fn drop_in_background<T: Send + 'static>(value: T) {
    let _ = std::thread::Builder::new()
        .name("l3agent-drop".into())
        .spawn(move || drop(value));
}

/// What one apply did, per family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Restore input sent per family (empty: nothing sent).
    pub sent: Vec<(Family, String)>,
    /// Whether the kernel was read (a resync) for any family.
    pub read_kernel: bool,
    /// The namespace vanished: nothing more to do there (not an error).
    pub namespace_gone: bool,
    /// The apply was deferred (inside [`Manager::defer_apply`]).
    pub deferred: bool,
    /// Planner notes (e.g. a stale chain kept because a foreign rule uses it).
    pub notes: Vec<String>,
    /// A family's restore got the start of its input while the model was still being built
    /// (see [`crate::stream`]).
    pub streamed: bool,
}

impl ApplyReport {
    /// Whether nothing was sent to the kernel.
    pub fn is_noop(&self) -> bool {
        self.sent.is_empty()
    }
    /// Total restore lines sent.
    pub fn lines(&self) -> usize {
        self.sent.iter().map(|(_, t)| t.lines().count()).sum()
    }
}

/// Packet and byte counters of a chain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// An iptables manager bound to one namespace.
#[derive(Debug)]
pub struct Manager<R: Runner = ProcessRunner> {
    model: IptablesModel,
    runner: R,
    committed: [Option<KernelState>; 2],
    /// What the last [`Manager::plan`] read from the kernel, reused by the next apply instead
    /// of a second `iptables-save` (cleared by [`Manager::refresh`]).
    planned_read: [Option<KernelState>; 2],
    /// Set by [`Manager::assume_empty`]: the kernel's rule set of the family is taken as empty
    /// instead of being read, until the next apply commits or fails.
    assumed_empty: [bool; 2],
    /// Set by [`Manager::assume_state`]: the kernel's rule set of the family is known without
    /// reading it; used like a read by the next plan or apply.
    known: [Option<KernelState>; 2],
    /// Set by [`Manager::prepare_committed_save`].
    prepare_save: bool,
    /// `committed[i].to_save()`, rendered during the apply that committed it (see
    /// [`Manager::prepare_committed_save`]); `None` whenever `committed[i]` changes otherwise.
    committed_save: [Option<String>; 2],
    deferred: u32,
    /// A restore already fed the start of the next apply's input (see [`crate::stream`]).
    stream: Option<Streamed>,
}

impl<R: Runner> Manager<R> {
    /// A manager over `runner` (the real [`ProcessRunner`], or a fake in tests).
    pub fn with_runner(model: IptablesModel, runner: R) -> Self {
        Manager {
            model,
            runner,
            committed: [None, None],
            planned_read: [None, None],
            assumed_empty: [false, false],
            known: [None, None],
            prepare_save: false,
            committed_save: [None, None],
            deferred: 0,
            stream: None,
        }
    }

    /// Gives the next [`Manager::apply`] a restore of its family already fed the start of its
    /// input (see [`crate::stream`]): if the plan can begin with exactly that, the restore gets
    /// the rest; otherwise it is killed unapplied and the plan restored as usual. That apply
    /// restores its family first, and kills the restore if it does not use it.
    pub fn attach_stream(&mut self, stream: Streamed) {
        self.stream = Some(stream);
    }

    /// The desired state.
    pub fn model(&self) -> &IptablesModel {
        &self.model
    }

    /// The desired state, to change it. Changes take effect at the next [`Manager::apply`].
    pub fn model_mut(&mut self) -> &mut IptablesModel {
        &mut self.model
    }

    /// Replaces the whole desired state (e.g. a reloaded rules file). The next apply compares
    /// everything.
    pub fn set_model(&mut self, model: IptablesModel) {
        self.model = model;
        self.model.mark_all_dirty();
    }

    /// Takes `model`'s rules as the desired state, marking only the chains that differ from
    /// the current one (see [`IptablesModel::update_from`]): the next plan and apply compare
    /// those chains alone, and a chain `model` no longer has is deleted. Returns whether
    /// anything differed. What an agent does with each new compile of a namespace.
    pub fn update_model(&mut self, model: &IptablesModel) -> bool {
        self.model.update_from(model)
    }

    /// The runner.
    pub fn runner(&self) -> &R {
        &self.runner
    }

    /// Forgets the committed state: the next apply reads the kernel and repairs any drift.
    pub fn refresh(&mut self) {
        self.committed = [None, None];
        self.committed_save = [None, None];
        self.planned_read = [None, None];
        self.assumed_empty = [false, false];
        self.known = [None, None];
    }

    /// The caller knows the kernel's rule set of `family` without reading it: `state` is what
    /// an `iptables-save` would print now (e.g. a snapshot proven current by an unchanged
    /// nf_tables generation, see [`crate::applied`]). The next [`Manager::plan`] and
    /// [`Manager::apply`] compare everything against it, as after a read, without a save; after
    /// a failed apply the kernel is read as usual, and [`Manager::refresh`] forgets it.
    pub fn assume_state(&mut self, family: Family, state: KernelState) {
        self.committed[family.index()] = None;
        self.committed_save[family.index()] = None;
        self.planned_read[family.index()] = None;
        self.assumed_empty[family.index()] = false;
        self.known[family.index()] = Some(state);
    }

    /// What the kernel holds for `family` as of the last successful apply (the committed
    /// state the next apply plans from); `None` before one, and after a failure.
    pub fn committed(&self, family: Family) -> Option<&KernelState> {
        self.committed[family.index()].as_ref()
    }

    /// For a caller that writes the committed state down after each apply (a one-shot apply's
    /// record, see [`crate::applied`]): a big apply renders it in `iptables-save` form on the
    /// thread that simulates the plan while `iptables-restore` runs, instead of after it
    /// ([`Manager::take_committed_save`]).
    pub fn prepare_committed_save(&mut self, on: bool) {
        self.prepare_save = on;
    }

    /// [`Manager::committed`] in `iptables-save` form ([`KernelState::to_save`]): the text
    /// rendered during the apply if [`Manager::prepare_committed_save`] asked for it (and
    /// taken: a second call renders it again), else rendered now.
    pub fn take_committed_save(&mut self, family: Family) -> Option<String> {
        let i = family.index();
        let state = self.committed[i].as_ref()?;
        Some(
            self.committed_save[i]
                .take()
                .unwrap_or_else(|| state.to_save()),
        )
    }

    /// Ends the manager, keeping its runner (and with it a lock the runner holds): the model
    /// and the committed state are freed on another thread, off the caller's path (a
    /// one-shot process that is about to exit need not wait for 100,000 small frees).
    pub fn into_runner(self) -> R
    where
        R: 'static,
    {
        let Manager {
            model,
            runner,
            committed,
            planned_read,
            known,
            committed_save,
            ..
        } = self;
        drop_in_background((model, committed, planned_read, known, committed_save));
        runner
    }

    /// What this manager's runner made the system do (see [`crate::stats`]).
    pub fn stats(&self) -> crate::stats::StatsSnapshot {
        self.runner.stats()
    }

    /// The namespace was created a moment ago by the caller, who knows that nothing wrote
    /// rules there since: its rule sets are taken as empty instead of being read. The next
    /// [`Manager::plan`] and [`Manager::apply`] compare everything (as after a read) against
    /// empty rule sets without an `iptables-save`; after a failed apply the kernel is read as
    /// usual, and [`Manager::refresh`] forgets the assumption.
    pub fn assume_empty(&mut self) {
        self.committed = [None, None];
        self.committed_save = [None, None];
        self.planned_read = [None, None];
        self.assumed_empty = [true, true];
        self.known = [None, None];
    }

    /// Neutron's `defer_apply`: inside `f`, [`Manager::apply`] only records; one real apply
    /// runs when the outermost `defer_apply` ends (also when `f` fails, so that nothing it
    /// changed is left half-known; `f`'s error is returned first).
    pub fn defer_apply<T, E: From<ApplyError>>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, E>,
    ) -> Result<T, E> {
        self.deferred += 1;
        let out = f(self);
        self.deferred -= 1;
        if self.deferred > 0 {
            return out;
        }
        let applied = self.apply();
        let value = out?;
        applied?;
        Ok(value)
    }

    /// Reads the kernel's rule set of a family (`None`: the namespace vanished).
    pub fn read(&self, family: Family) -> Result<Option<KernelState>, ApplyError> {
        self.parse_read(self.runner.save(family))
    }

    fn parse_read(
        &self,
        saved: Result<String, ExecError>,
    ) -> Result<Option<KernelState>, ApplyError> {
        match saved {
            Ok(text) => Ok(Some(KernelState::parse_save(&text)?)),
            Err(_) if !self.runner.namespace_alive() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Plans without applying (reads the kernel where nothing is committed): the restore input
    /// per family that [`Manager::apply`] would send now.
    pub fn plan(&mut self) -> Result<Vec<(Family, Plan)>, ApplyError> {
        let mut out = Vec::new();
        for family in self.model.families() {
            let i = family.index();
            // Planned against what is known, borrowed (a copy of a namespace's rules per plan
            // was most of an agent event's planning).
            let plan = match (&self.committed[i], &self.known[i]) {
                (Some(c), _) => plan_family(c, &self.model, family, Some(self.model.dirty(family))),
                (None, _) if self.assumed_empty[i] => {
                    plan_family(&KernelState::default(), &self.model, family, None)
                }
                (None, Some(k)) => plan_family(k, &self.model, family, None),
                (None, None) => match self.read(family)? {
                    Some(s) => {
                        let plan = plan_family(&s, &self.model, family, None);
                        self.planned_read[i] = Some(s);
                        plan
                    }
                    None => return Ok(out),
                },
            };
            out.push((family, plan));
        }
        Ok(out)
    }

    /// Neutron's `debug_iptables_rules`: reads the kernel and plans everything; the lines a
    /// second pass would send (empty: converged).
    pub fn check_convergence(&mut self) -> Result<Vec<String>, ApplyError> {
        let mut lines = Vec::new();
        for family in self.model.families() {
            let Some(state) = self.read(family)? else {
                break;
            };
            let plan = plan_family(&state, &self.model, family, None);
            lines.extend(plan.render().0.lines().map(|l| format!("{family} {l}")));
        }
        Ok(lines)
    }

    /// Makes the kernel match the desired state: one `iptables-restore --noflush` per family
    /// with changes, under the namespace lock. A failure leaves every table of that family as
    /// it was (tables committed before the failing one are reverted), keeps the changes pending
    /// and makes the next apply resync from the kernel.
    pub fn apply(&mut self) -> Result<ApplyReport, ApplyError> {
        let mut report = ApplyReport::default();
        // A streamed restore lives only through this apply (any return kills it), and its
        // family goes first: a legacy restore holds the xtables lock from its start, so another
        // family's restore must not wait behind one that is still being fed.
        let mut stream = self.stream.take();
        if self.deferred > 0 {
            report.deferred = true;
            return Ok(report);
        }
        let mut families: Vec<Family> = self
            .model
            .families()
            .into_iter()
            .filter(|f| self.committed[f.index()].is_none() || !self.model.dirty(*f).is_empty())
            .collect();
        let first = stream.as_ref().map(Streamed::family);
        families.sort_by_key(|f| Some(*f) != first);
        if families.is_empty() {
            return Ok(report);
        }
        let _lock = self.runner.lock()?;
        if !self.runner.namespace_alive() {
            info!(netns = %self.runner.label(), "namespace vanished; nothing to do");
            report.namespace_gone = true;
            return Ok(report);
        }
        // Families read from the kernel are read at once (one process each, concurrently).
        let to_read: Vec<Family> = families
            .iter()
            .copied()
            .filter(|f| {
                self.committed[f.index()].is_none()
                    && self.planned_read[f.index()].is_none()
                    && !self.assumed_empty[f.index()]
                    && self.known[f.index()].is_none()
            })
            .collect();
        let mut prefetched: Vec<(Family, Result<String, ExecError>)> = if to_read.len() > 1 {
            to_read
                .iter()
                .copied()
                .zip(self.runner.save_families(&to_read))
                .collect()
        } else {
            Vec::new()
        };
        for family in families {
            let dirty = self.model.take_dirty(family);
            self.committed_save[family.index()] = None;
            let (mut current, scope) = match self.committed[family.index()].take() {
                Some(c) => (c, Some(dirty.clone())),
                None if self.planned_read[family.index()].is_some() => {
                    // Read by the plan just before: used once instead of a second save.
                    report.read_kernel = true;
                    let read = self.planned_read[family.index()].take();
                    (read.unwrap_or_default(), None)
                }
                None if self.assumed_empty[family.index()] => {
                    // Known empty (see assume_empty): compared in full, nothing read.
                    self.assumed_empty[family.index()] = false;
                    (KernelState::default(), None)
                }
                None if self.known[family.index()].is_some() => {
                    // Known without a read (see assume_state): compared in full.
                    (self.known[family.index()].take().unwrap_or_default(), None)
                }
                None => {
                    report.read_kernel = true;
                    let saved = match prefetched.iter().position(|(f, _)| *f == family) {
                        Some(i) => prefetched.remove(i).1,
                        None => self.runner.save(family),
                    };
                    match self.parse_read(saved) {
                        Ok(Some(s)) => (s, None),
                        Ok(None) => {
                            self.model.restore_dirty(family, dirty);
                            info!(netns = %self.runner.label(), "namespace vanished during apply; nothing to do");
                            report.namespace_gone = true;
                            return Ok(report);
                        }
                        Err(e) => {
                            self.model.restore_dirty(family, dirty);
                            return Err(e);
                        }
                    }
                }
            };
            let mut plan = plan_family(&current, &self.model, family, scope.as_ref());
            report
                .notes
                .extend(plan.notes.iter().map(|n| format!("{family} {n}")));
            for n in &plan.notes {
                warn!(netns = %self.runner.label(), %family, "{n}");
            }
            if plan.is_empty() {
                self.forget_released(family, &current, &dirty);
                self.committed[family.index()] = Some(current);
                continue;
            }
            // A streamed restore: its input is known now (the writer may still be writing it),
            // so the plan is reordered and rendered meanwhile.
            let led = stream
                .take_if(|s| s.family() == family)
                .and_then(Streamed::end)
                .and_then(|(written, writer)| {
                    if plan.lead_with(&written) {
                        Some((writer, written))
                    } else {
                        debug!(netns = %self.runner.label(), %family, "the plan does not begin with what was streamed; restoring it whole");
                        writer.kill();
                        None
                    }
                });
            let (text, lines) = plan.render();
            let led = led.and_then(|(writer, written)| {
                if text.starts_with(&written) {
                    Some((writer, written.len()))
                } else {
                    warn!(netns = %self.runner.label(), %family, "a reordered plan does not render what was streamed; restoring it whole");
                    writer.kill();
                    None
                }
            });
            let streamed = led.is_some();
            info!(netns = %self.runner.label(), %family, lines = lines.len(), streamed, "applying iptables changes");
            let runner = &self.runner;
            let restore = |led: Option<(Writer, usize)>| match led
                .and_then(|(w, sent)| Some((w.written()?, sent)))
            {
                Some((fed, sent)) => runner.restore_rest(family, fed, &text, sent),
                None => runner.restore(family, &text),
            };
            debug!(netns = %self.runner.label(), %family, input = %text, "restore input");
            // A big plan: simulate its effect on a copy while iptables-restore runs (two cores
            // are cheaper than one), and render it if asked to; a small one: after it
            // succeeded, in place.
            let (restored, simulated) = if plan.len() > PARALLEL_SIMULATION_OPS {
                let (plan_ref, current_ref) = (&plan, &current);
                let prepare = self.prepare_save;
                std::thread::scope(|s| {
                    let sim = s.spawn(move || {
                        let mut after = current_ref.clone();
                        plan_ref.apply_to(&mut after).map(|()| {
                            let text = prepare.then(|| after.to_save());
                            (after, text)
                        })
                    });
                    let restored = restore(led);
                    let simulated = sim
                        .join()
                        .unwrap_or_else(|_| Err("simulation panicked".into()));
                    (restored, Some(simulated))
                })
            } else {
                (restore(led), None)
            };
            match restored {
                Ok(()) => {
                    let simulated = simulated.unwrap_or_else(|| {
                        let mut after = std::mem::take(&mut current);
                        plan.apply_to(&mut after).map(|()| (after, None))
                    });
                    match simulated {
                        Ok((after, text)) => {
                            self.forget_released(family, &after, &dirty);
                            self.committed[family.index()] = Some(after);
                            self.committed_save[family.index()] = text;
                        }
                        Err(e) => {
                            warn!(%family, "committed state diverged from the plan ({e}); will resync");
                            self.committed[family.index()] = None;
                        }
                    }
                    report.sent.push((family, text));
                    report.streamed |= streamed;
                    // A small plan's state was moved into `after`: nothing to free that
                    // is worth a thread.
                    if plan.len() > PARALLEL_SIMULATION_OPS {
                        drop_in_background((plan, current));
                    }
                }
                Err(failure) => {
                    self.model.restore_dirty(family, dirty);
                    self.committed[family.index()] = None;
                    if !self.runner.namespace_alive() {
                        info!(netns = %self.runner.label(), "namespace vanished during apply; nothing to do");
                        report.namespace_gone = true;
                        return Ok(report);
                    }
                    let failure = failure?;
                    let rollback = self.revert(family, &current);
                    let input: Vec<&str> = text.lines().collect();
                    let line = failing_line(&failure.stderr, lines.len())
                        .map(|n| refine_line(n, &failure.stderr, &input, &lines));
                    let context = line
                        .map(|n| {
                            let lo = n.saturating_sub(5).max(1);
                            let hi = (n + 5).min(input.len());
                            (lo..=hi).map(|i| (i, input[i - 1].to_owned())).collect()
                        })
                        .unwrap_or_default();
                    let err = RestoreError {
                        family,
                        line,
                        line_text: line.map(|n| input[n - 1].to_owned()),
                        origin: line.and_then(|n| lines[n - 1].origin.as_deref().cloned()),
                        context,
                        code: failure.code,
                        stderr: failure.stderr,
                        rollback,
                    };
                    match err.line {
                        Some(line) => warn!(
                            netns = %self.runner.label(),
                            %family,
                            %line,
                            "iptables-restore failed"
                        ),
                        None => {
                            warn!(netns = %self.runner.label(), %family, "iptables-restore failed")
                        }
                    }
                    return Err(ApplyError::Restore(Box::new(err)));
                }
            }
        }
        Ok(report)
    }

    fn forget_released(
        &mut self,
        family: Family,
        state: &KernelState,
        dirty: &std::collections::BTreeMap<Table, BTreeSet<String>>,
    ) {
        for (table, chains) in dirty {
            for c in chains {
                if state.table(*table).chain(c).is_none() {
                    self.model.forget_released(family, *table, c);
                }
            }
        }
    }

    /// Puts back every table of `family` whose part of ours differs from `before`.
    fn revert(&self, family: Family, before: &KernelState) -> Rollback {
        let now = match self
            .runner
            .save(family)
            .map_err(|e| e.to_string())
            .and_then(|t| KernelState::parse_save(&t).map_err(|e| e.to_string()))
        {
            Ok(n) => n,
            Err(e) => return Rollback::Failed(e),
        };
        let mut wraps = before.wraps.clone();
        wraps.extend(now.wraps.iter().cloned());
        let mut input = String::new();
        let tables: BTreeSet<Table> = before
            .tables
            .keys()
            .chain(now.tables.keys())
            .copied()
            .collect();
        for table in tables {
            match revert_table(
                table,
                now.table(table),
                before.table(table),
                self.model.wrap(),
                &wraps,
            ) {
                Ok(ops) if ops.is_empty() => {}
                Ok(ops) => {
                    input.push_str(&format!("*{table}\n"));
                    for op in ops {
                        input.push_str(&op.render());
                        input.push('\n');
                    }
                    input.push_str("COMMIT\n");
                }
                Err(e) => return Rollback::Failed(e),
            }
        }
        if input.is_empty() {
            return Rollback::NothingCommitted;
        }
        match self.runner.restore(family, &input) {
            Ok(()) => Rollback::Reverted,
            Err(Ok(f)) => Rollback::Failed(f.stderr),
            Err(Err(e)) => Rollback::Failed(e.to_string()),
        }
    }

    /// Neutron's `get_traffic_counters`: packets and bytes of a chain, summed over every table
    /// (and family) that has it; `None` if no table has it. `zero` resets them as they are
    /// read. Unlike Neutron (B-11) a wrapped chain is listed under its wrapped name.
    pub fn traffic_counters(
        &self,
        chain: &str,
        wrap: bool,
        zero: bool,
    ) -> Result<Option<Counters>, ApplyError> {
        let full = self.model.kernel_chain(chain, wrap)?;
        let mut found = false;
        let mut total = Counters::default();
        for family in self.model.families() {
            for table in self.model.tables_of(family) {
                if !self.model.has_chain(family, table, chain, wrap) {
                    continue;
                }
                let text = self.runner.list(family, table, &full, zero)?;
                let c = parse_counters(&text)
                    .map_err(|e| ExecError::Backend(format!("listing {full}: {e}")))?;
                total.packets += c.packets;
                total.bytes += c.bytes;
                found = true;
            }
        }
        Ok(found.then_some(total))
    }
}

/// The nft backend reports a jump to a missing chain at the `COMMIT` of its table: point at the
/// rule that jumps there instead.
fn refine_line(
    n: usize,
    stderr: &str,
    input: &[&str],
    lines: &[l3agent_iptables::plan::LineInfo],
) -> usize {
    if input[n - 1] != "COMMIT" {
        return n;
    }
    let missing = stderr
        .split("Chain '")
        .nth(1)
        .and_then(|rest| rest.split_once('\''))
        .map(|(name, _)| name.to_owned());
    let Some(missing) = missing else { return n };
    let table = lines[n - 1].table;
    (1..n)
        .rev()
        .take_while(|&i| lines[i - 1].table == table)
        .find(|&i| {
            let t = input[i - 1];
            t.ends_with(&format!(" -j {missing}")) || t.ends_with(&format!(" -g {missing}"))
        })
        .unwrap_or(n)
}

/// Sums the `pkts` and `bytes` columns of `iptables -L CHAIN -n -v -x` output.
pub fn parse_counters(text: &str) -> Result<Counters, String> {
    let mut c = Counters::default();
    for line in text.lines().skip(2) {
        let mut cols = line.split_whitespace();
        let (Some(p), Some(b)) = (cols.next(), cols.next()) else {
            break;
        };
        let (Ok(p), Ok(b)) = (p.parse::<u64>(), b.parse::<u64>()) else {
            break;
        };
        c.packets = c.packets.checked_add(p).ok_or("counter overflow")?;
        c.bytes = c.bytes.checked_add(b).ok_or("counter overflow")?;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_listing() {
        // Captured: ip netns exec t iptables-nft -t filter -L l3agent-fw -n -v -x
        let text = "Chain l3agent-fw (1 references)\n    pkts      bytes target     prot opt in     out     source               destination\n       3      252 ACCEPT     1    --  *      *       0.0.0.0/0            0.0.0.0/0\n       2      120 ACCEPT     6    --  *      *       192.0.2.1            0.0.0.0/0            tcp dpt:22\n";
        assert_eq!(
            parse_counters(text).unwrap(),
            Counters {
                packets: 5,
                bytes: 372
            }
        );
        assert_eq!(
            parse_counters("Chain x (0 references)\n pkts bytes\n").unwrap(),
            Counters::default()
        );
    }
}

/// Manager behaviour under injected faults, with a simulated kernel.
#[cfg(test)]
mod fault_tests {
    use std::cell::{Cell, RefCell};

    use l3agent_iptables::kernel::Op;
    use l3agent_iptables::{ModelOptions, RuleSpec, WrapName};

    use super::*;
    use crate::runner::RestoreFailure;

    /// A kernel in memory that commits table by table like iptables-restore, and can be told
    /// to fail a table, to lose its namespace, or to report lock contention.
    #[derive(Default)]
    struct FakeKernel {
        state: RefCell<[KernelState; 2]>,
        fail_table: Cell<Option<Table>>,
        lock_busy: Cell<bool>,
        gone: Cell<bool>,
        restores: Cell<usize>,
        saves: Cell<usize>,
    }

    impl Runner for FakeKernel {
        fn save(&self, family: Family) -> Result<String, ExecError> {
            self.saves.set(self.saves.get() + 1);
            if self.gone.get() {
                return Err(ExecError::Failed {
                    program: "save".into(),
                    code: Some(1),
                    stderr: "gone".into(),
                });
            }
            Ok(self.state.borrow()[family.index()].to_save())
        }

        fn restore(
            &self,
            family: Family,
            input: &str,
        ) -> Result<(), Result<RestoreFailure, ExecError>> {
            self.restores.set(self.restores.get() + 1);
            if self.lock_busy.get() {
                return Err(Ok(RestoreFailure {
                    code: Some(4),
                    stderr: "Another app is currently holding the xtables lock.".into(),
                }));
            }
            let mut table = None;
            let mut ops = Vec::new();
            for (i, line) in input.lines().enumerate() {
                if let Some(t) = line.strip_prefix('*') {
                    table = Table::parse(t);
                    ops.clear();
                } else if line == "COMMIT" {
                    let t = table.expect("table");
                    if self.fail_table.get() == Some(t) {
                        return Err(Ok(RestoreFailure {
                            code: Some(1),
                            stderr: format!("iptables-restore: line {} failed", i),
                        }));
                    }
                    self.state.borrow_mut()[family.index()]
                        .apply(t, &ops)
                        .expect("valid ops");
                } else {
                    ops.push(Op::parse(line).expect("parsable line"));
                }
            }
            Ok(())
        }

        fn list(&self, _: Family, _: Table, _: &str, _: bool) -> Result<String, ExecError> {
            Ok(String::new())
        }

        fn lock(&self) -> Result<Box<dyn std::any::Any>, ExecError> {
            Ok(Box::new(()))
        }

        fn namespace_alive(&self) -> bool {
            !self.gone.get()
        }

        fn label(&self) -> String {
            "fake".into()
        }
    }

    fn manager() -> Manager<FakeKernel> {
        Manager::with_runner(
            IptablesModel::new(WrapName::new("w").unwrap(), ModelOptions::default()),
            FakeKernel::default(),
        )
    }

    #[test]
    fn noop_apply_runs_nothing_and_changes_send_only_the_delta() {
        let mut m = manager();
        m.apply().unwrap();
        let (saves, restores) = (m.runner().saves.get(), m.runner().restores.get());
        assert_eq!((saves, restores), (2, 2));
        assert!(m.apply().unwrap().is_noop());
        assert_eq!(
            (m.runner().saves.get(), m.runner().restores.get()),
            (saves, restores)
        );
        m.model_mut()
            .add_rule(
                Family::V4,
                Table::Filter,
                RuleSpec::new("INPUT", "-j ACCEPT"),
            )
            .unwrap();
        let r = m.apply().unwrap();
        assert_eq!(
            r.sent,
            vec![(
                Family::V4,
                "*filter\n-A w-INPUT -j ACCEPT\nCOMMIT\n".to_owned()
            )]
        );
        assert_eq!(
            m.runner().saves.get(),
            saves,
            "an incremental apply must not read the kernel"
        );
    }

    #[test]
    fn an_updated_model_sends_only_what_changed_and_deletes_a_chain_it_dropped() {
        let with_x = |source: &str| {
            let mut m = IptablesModel::new(WrapName::new("w").unwrap(), ModelOptions::default());
            m.add_chain(Family::V4, Table::Filter, "x", true).unwrap();
            let rule = format!("-s {source} -j DROP");
            m.add_rule(Family::V4, Table::Filter, RuleSpec::new("x", &rule))
                .unwrap();
            m.add_rule(Family::V4, Table::Filter, RuleSpec::new("INPUT", "-j $x"))
                .unwrap();
            m
        };
        let mut m = manager();
        assert!(m.update_model(&with_x("192.0.2.1/32")));
        m.apply().unwrap();
        assert!(m.check_convergence().unwrap().is_empty());

        // One rule of x changed: x alone is compared, and only its rule is sent.
        assert!(m.update_model(&with_x("192.0.2.2/32")));
        let dirty: Vec<(Table, Vec<String>)> = m
            .model()
            .dirty(Family::V4)
            .iter()
            .map(|(t, c)| (*t, c.iter().cloned().collect()))
            .collect();
        assert_eq!(dirty, vec![(Table::Filter, vec!["w-x".to_owned()])]);
        assert!(m.model().dirty(Family::V6).is_empty());
        let sent = m.apply().unwrap().sent;
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert!(sent[0].1.contains("192.0.2.2/32"), "{sent:?}");
        assert!(!sent[0].1.contains("INPUT"), "{sent:?}");
        assert!(m.check_convergence().unwrap().is_empty());

        // The same rules again: nothing to compare, nothing sent.
        assert!(!m.update_model(&with_x("192.0.2.2/32")));
        assert!(m.apply().unwrap().is_noop());

        // x and the jump to it dropped: both leave the kernel.
        let bare = IptablesModel::new(WrapName::new("w").unwrap(), ModelOptions::default());
        assert!(m.update_model(&bare));
        m.apply().unwrap();
        let saved = m.runner().state.borrow()[Family::V4.index()].to_save();
        assert!(!saved.contains("w-x"), "{saved}");
        assert!(m.check_convergence().unwrap().is_empty());
    }

    #[test]
    fn a_namespace_assumed_empty_is_planned_and_applied_without_a_read() {
        let mut m = manager();
        m.model_mut()
            .add_rule(
                Family::V4,
                Table::Filter,
                RuleSpec::new("INPUT", "-j ACCEPT"),
            )
            .unwrap();
        m.assume_empty();
        // What a plan against an empty rule set sends, family by family.
        let want: Vec<(Family, String)> = Family::ALL
            .into_iter()
            .map(|f| {
                let p = plan_family(&KernelState::default(), m.model(), f, None);
                (f, p.render().0)
            })
            .filter(|(_, t)| !t.is_empty())
            .collect();
        let planned: Vec<(Family, String)> = m
            .plan()
            .unwrap()
            .into_iter()
            .filter(|(_, p)| !p.is_empty())
            .map(|(f, p)| (f, p.render().0))
            .collect();
        assert_eq!(planned, want);
        let r = m.apply().unwrap();
        assert_eq!(r.sent, want);
        assert!(!r.read_kernel);
        assert_eq!(m.runner().saves.get(), 0, "nothing may be read");
        assert!(m.check_convergence().unwrap().is_empty());
        // Once applied, the assumption is gone: a refresh reads the kernel again.
        m.refresh();
        assert!(m.apply().unwrap().is_noop());
        assert!(m.runner().saves.get() > 0);
    }

    #[test]
    fn after_a_failed_apply_an_assumed_empty_namespace_is_read() {
        let mut m = manager();
        m.model_mut()
            .add_rule(
                Family::V4,
                Table::Nat,
                RuleSpec::new("PREROUTING", "-j ACCEPT"),
            )
            .unwrap();
        m.assume_empty();
        m.runner().fail_table.set(Some(Table::Nat));
        assert!(m.apply().is_err());
        m.runner().fail_table.set(None);
        let saves = m.runner().saves.get();
        let r = m.apply().unwrap();
        assert!(r.read_kernel, "after a failure the kernel is read again");
        assert!(m.runner().saves.get() > saves);
        assert!(m.check_convergence().unwrap().is_empty());
    }

    #[test]
    fn defer_apply_batches_into_one_restore() {
        let mut m = manager();
        m.apply().unwrap();
        let before = m.runner().restores.get();
        m.defer_apply(|m| -> Result<(), ApplyError> {
            for i in 1..=3 {
                m.model_mut().add_rule(
                    Family::V4,
                    Table::Filter,
                    RuleSpec::new("INPUT", &format!("-s 192.0.2.{i} -j ACCEPT")),
                )?;
                assert!(m.apply()?.deferred);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(m.runner().restores.get(), before + 1);
    }

    #[test]
    fn partial_commit_is_reverted_and_changes_stay_pending() {
        let mut m = manager();
        m.apply().unwrap();
        let before = m.runner().state.borrow()[0].to_save();
        m.model_mut()
            .add_rule(
                Family::V4,
                Table::Filter,
                RuleSpec::new("INPUT", "-j ACCEPT"),
            )
            .unwrap();
        m.model_mut()
            .add_rule(
                Family::V4,
                Table::Nat,
                RuleSpec::new("PREROUTING", "-j ACCEPT"),
            )
            .unwrap();
        m.runner().fail_table.set(Some(Table::Nat));
        let ApplyError::Restore(e) = m.apply().unwrap_err() else {
            panic!()
        };
        assert_eq!(e.rollback, Rollback::Reverted);
        assert_eq!(
            m.runner().state.borrow()[0].to_save(),
            before,
            "filter was not reverted"
        );
        m.runner().fail_table.set(None);
        let r = m.apply().unwrap();
        assert!(r.read_kernel, "after a failure the kernel is read again");
        assert!(m.runner().state.borrow()[0]
            .to_save()
            .contains("-A w-PREROUTING -j ACCEPT"));
        assert!(m.check_convergence().unwrap().is_empty());
    }

    #[test]
    fn lock_contention_is_reported_without_a_line() {
        let mut m = manager();
        m.runner().lock_busy.set(true);
        let err = m.apply().unwrap_err();
        let ApplyError::Restore(e) = &err else {
            panic!("{err}")
        };
        assert_eq!(e.line, None);
        assert_eq!(e.code, Some(4));
        assert!(err.to_string().contains("xtables lock"), "{err}");
        m.runner().lock_busy.set(false);
        assert!(!m.apply().unwrap().is_noop());
    }

    #[test]
    fn namespace_gone_while_reading_is_a_noop() {
        let mut m = manager();
        m.runner().gone.set(true);
        let r = m.apply().unwrap();
        assert!(r.namespace_gone && r.is_noop());
        assert_eq!(m.runner().restores.get(), 0);
    }
}

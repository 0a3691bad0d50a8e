//! `l3agent iptables apply`: one apply from a fresh process, through
//! [`l3agent_iptables_exec::applied::OneShot`].
//!
//! The order is chosen for a fresh process at tens of thousands of rules:
//! 1. read the file (no parsing yet) and open, lock and stamp the namespace (nf_tables
//!    generation, a few microseconds). If the generation is the one recorded after the last
//!    apply of exactly these bytes, the kernel provably holds them: done, nothing parsed, read
//!    or run.
//! 2. otherwise build the model on this thread while another reads the kernel (the recorded
//!    rule set if the generation is unchanged, else the `iptables-save` of backend detection),
//!    so the two costs overlap on two cores; when the kernel was read and it lacks the chains
//!    of a large table (a cold apply), that table is streamed into its `iptables-restore` as
//!    its rules are read, without `COMMIT` (l3agent_iptables_exec::stream);
//! 3. plan, restore (or give a streamed restore the rest of the plan), and record the result
//!    for the next process.
//!
//! An invalid file is still reported as invalid (exit 2) before any kernel problem, and nothing
//! is committed to the kernel before the file is valid (a streamed restore is killed first).

use std::path::{Path, PathBuf};

use clap::Args;
use l3agent_iptables::model::Standby;
use l3agent_iptables::spec::RulesFile;
use l3agent_iptables::IptablesModel;
use l3agent_iptables::{Feed, Help};
use l3agent_iptables_exec::applied::{input_digest, Basis, OneShot, STATE_DIR};
use l3agent_iptables_exec::stream::StreamFeed;
use l3agent_iptables_exec::{ExecOptions, Manager};
use serde_json::json;

use super::{limits, print_json, problems, target, Failure, Target};

/// Arguments of `iptables apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Rules file (YAML, or JSON if it ends in .json): the complete desired state of one wrap
    /// name. See examples/rules.yaml.
    #[arg(long, value_name = "FILE")]
    rules: PathBuf,
    #[command(flatten)]
    pub target: Target,
    /// Print the restore input that would be sent; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// After applying, read the kernel back and fail if a second pass would change anything
    /// (Neutron's debug_iptables_rules).
    #[arg(long)]
    check: bool,
    /// Where the record of the last apply per namespace and wrap name is kept (it lets the
    /// next apply skip reading the kernel when nf_tables proves nothing changed since).
    #[arg(long, value_name = "DIR", default_value = STATE_DIR, hide = true)]
    state_dir: PathBuf,
}

/// The model of a rules file already read, its rules read on `threads` threads and those of
/// `standby` once released; every problem is listed (exit 2).
fn model_of(path: &Path, bytes: &[u8], help: Help<'_>) -> Result<IptablesModel, Failure> {
    // A JSON document that is a mapping and reads as a rules file is read without tracking
    // field paths (several times faster on a large file); any problem, and any other
    // document, goes through the document reader for its checks and its error by path.
    let fast = (l3agent_doc::Format::of(path) == l3agent_doc::Format::Json
        && bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'))
    .then(|| serde_json::from_slice::<RulesFile>(bytes).ok())
    .flatten();
    let file: RulesFile = match fast {
        Some(file) => file,
        None => l3agent_doc::parse(
            bytes,
            l3agent_doc::Format::of(path),
            &limits(),
            "wrap_name: <name> with no rules",
        )
        .map_err(|e| {
            let problem = match &e {
                l3agent_doc::DocError::Invalid { path, message } => (path.clone(), message.clone()),
                other => (".".to_owned(), other.to_string()),
            };
            Failure::invalid(format!("{}: {e}", path.display())).with_problems(vec![problem])
        })?,
    };
    file.into_model_with(help).map_err(|errors| {
        let list = errors
            .iter()
            .map(|e| match e.to_string().split_once(": ") {
                Some((p, m)) => (p.to_owned(), m.to_owned()),
                None => (".".to_owned(), e.to_string()),
            })
            .collect();
        problems(path, "nothing applied", list)
    })
}

/// Runs `iptables apply`.
pub fn run(a: ApplyArgs) -> Result<(), Failure> {
    let bytes = l3agent_doc::read(&a.rules, &limits()).map_err(|e| {
        Failure::invalid(format!("{}: {e}", a.rules.display()))
            .with_problems(vec![(".".to_owned(), e.to_string())])
    })?;
    let context = format!("backend {:?}", a.target.backend);
    let begun = target(&a.target.netns).and_then(|t| {
        OneShot::begin(&t, a.target.backend, ExecOptions::default(), &a.state_dir)
            .map_err(Failure::from)
    });
    // The input's digest decides the no-op when a current record exists; otherwise it is only
    // recorded after the apply, and is computed off the critical path (below).
    let mut digest = None;
    if let Ok(shot) = &begun {
        if !shot.will_save() {
            let d = input_digest(&context, &bytes);
            if !a.dry_run && !a.check && shot.unchanged(&d) {
                report_unchanged(&a, "nft");
                return Ok(());
            }
            digest = Some(d);
        }
    }
    // Build the model (and its digest) here while another thread reads the kernel. While an
    // iptables-save runs, one core is the save's: the model starts on the others, and the
    // reading thread's core joins in once the save is done (at once in an empty namespace,
    // after a while at tens of thousands of rules).
    let cores = l3agent_iptables::model::default_threads();
    let (threads, standby) = match &begun {
        Ok(shot) if shot.will_save() => {
            let now = cores.saturating_sub(1).max(1);
            (now, cores - now)
        }
        _ => (cores, 0),
    };
    let standby = Standby::new(standby);
    // The kernel read goes to the model build through the feed: when the kernel is read (no
    // current record), a large table it does not hold yet is streamed into its restore while
    // the rest of the file is read (see l3agent_iptables_exec::stream; nothing commits before
    // the whole file is valid).
    let feeding = !a.dry_run && begun.as_ref().is_ok_and(OneShot::will_save);
    let (feed, read_to) = StreamFeed::<Failure>::new();
    let (model, begun, stream, digest) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let read = begun.and_then(|mut shot| {
                shot.read()?;
                Ok::<OneShot, Failure>(shot)
            });
            let _ = read_to.send(read);
            let digest = digest.unwrap_or_else(|| input_digest(&context, &bytes));
            standby.release();
            digest
        });
        let help = Help {
            threads,
            standby: Some(&standby),
            feed: feeding.then_some(&feed as &dyn Feed),
        };
        let model = model_of(&a.rules, &bytes, help).map(|m| {
            let digest = m.digest();
            (m, digest)
        });
        tracing::debug!("model built");
        let digest = reader.join().unwrap_or_default();
        let (shot, stream) = feed.finish();
        let shot = shot.unwrap_or_else(|| Err(Failure::failed("reading the kernel panicked")));
        (model, shot, stream, digest)
    });
    // An invalid file or a failed read drops the stream: its restore is killed unapplied.
    let (model, model_digest) = model?;
    let shot = begun?;
    drop(bytes);
    if a.dry_run {
        return dry_run(&a, shot, model);
    }
    let check_model = a.check.then(|| model.clone());
    let report = shot.apply_streamed(model, model_digest, Some(&digest), stream)?;
    let backend = report.backend.to_string();
    if report.basis == Basis::Unchanged && !a.check {
        report_unchanged(&a, &backend);
        return Ok(());
    }
    let unconverged = match (check_model, report.manager) {
        (Some(_), m) if report.apply.namespace_gone => {
            drop(m.map(Manager::into_runner));
            Vec::new()
        }
        (Some(_), Some(mut m)) => {
            let lines = m.check_convergence()?;
            drop(m.into_runner());
            lines
        }
        (Some(model), None) => {
            // Nothing was planned (the recorded model): check with a manager of its own.
            Manager::open(
                &target(&a.target.netns)?,
                a.target.backend,
                model,
                ExecOptions::default(),
            )?
            .check_convergence()?
        }
        // The runner (and the namespace lock) ends now; the large values on another thread.
        (None, m) => {
            drop(m.map(Manager::into_runner));
            Vec::new()
        }
    };
    let apply = &report.apply;
    if a.target.json {
        let fams: serde_json::Map<String, serde_json::Value> = apply
            .sent
            .iter()
            .map(|(f, t)| {
                (
                    f.to_string(),
                    json!({"lines": t.lines().count(), "input": t}),
                )
            })
            .collect();
        print_json(&json!({
            "changed": !apply.is_noop(),
            "backend": backend,
            "namespace_gone": apply.namespace_gone,
            "families": fams,
            "notes": apply.notes,
            "converged": unconverged.is_empty(),
            "kernel_read": basis_name(report.basis),
            "streamed": apply.streamed,
            "recorded": report.recorded,
        }));
    } else if apply.namespace_gone {
        println!("namespace vanished during the apply: nothing to do");
    } else if apply.is_noop() {
        println!(
            "nothing to do: the kernel already matches {} ({backend})",
            a.rules.display()
        );
    } else {
        for (family, text) in &apply.sent {
            println!(
                "{family}: applied {} restore line(s) ({backend})",
                text.lines().count()
            );
        }
    }
    if !a.target.json {
        for n in &apply.notes {
            println!("note: {n}");
        }
    }
    if !unconverged.is_empty() {
        return Err(Failure::reported(format!(
            "rules did not converge: a second pass would still send:\n{}",
            unconverged.join("\n")
        )));
    }
    Ok(())
}

fn basis_name(b: Basis) -> &'static str {
    match b {
        Basis::Unchanged => "none: unchanged since the last apply",
        Basis::Recorded => "none: planned against the record of the last apply",
        Basis::Read => "iptables-save",
    }
}

/// The report of an apply that provably had nothing to do.
fn report_unchanged(a: &ApplyArgs, backend: &str) {
    if a.target.json {
        print_json(&json!({
            "changed": false,
            "backend": backend,
            "namespace_gone": false,
            "families": {},
            "notes": [],
            "converged": true,
            "kernel_read": basis_name(Basis::Unchanged),
            "recorded": true,
        }));
    } else {
        println!(
            "nothing to do: the kernel already matches {} ({backend}; unchanged since the last apply)",
            a.rules.display()
        );
    }
}

fn dry_run(a: &ApplyArgs, shot: OneShot, model: IptablesModel) -> Result<(), Failure> {
    let (plans, backend) = shot.plan(model)?;
    let backend = backend.to_string();
    if a.target.json {
        let fams: serde_json::Map<String, serde_json::Value> = plans
            .iter()
            .map(|(f, p)| {
                (
                    f.to_string(),
                    json!({"input": p.render().0, "notes": p.notes}),
                )
            })
            .collect();
        print_json(&json!({"dry_run": true, "backend": backend, "families": fams}));
    } else {
        for (family, plan) in &plans {
            if plan.is_empty() {
                println!("# {family}: nothing to do");
            } else {
                println!("# {family}: would send");
                print!("{}", plan.render().0);
            }
            for n in &plan.notes {
                println!("# note: {n}");
            }
        }
    }
    Ok(())
}

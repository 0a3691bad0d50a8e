//! `l3agent iptables apply`

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::{load_rules, open, print_json, Failure, Target};

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
}

/// Runs `iptables apply`.
pub fn run(a: ApplyArgs) -> Result<(), Failure> {
    let model = load_rules(&a.rules)?;
    let mut manager = open(&a.target, model)?;
    let backend = manager.runner().backend().to_string();
    if a.dry_run {
        let plans = manager.plan()?;
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
        return Ok(());
    }
    let report = manager.apply()?;
    let unconverged = if a.check && !report.namespace_gone {
        manager.check_convergence()?
    } else {
        Vec::new()
    };
    if a.target.json {
        let fams: serde_json::Map<String, serde_json::Value> = report
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
            "changed": !report.is_noop(),
            "backend": backend,
            "namespace_gone": report.namespace_gone,
            "families": fams,
            "notes": report.notes,
            "converged": unconverged.is_empty(),
        }));
    } else if report.namespace_gone {
        println!("namespace vanished during the apply: nothing to do");
    } else if report.is_noop() {
        println!(
            "nothing to do: the kernel already matches {} ({backend})",
            a.rules.display()
        );
    } else {
        for (family, text) in &report.sent {
            println!(
                "{family}: applied {} restore line(s) ({backend})",
                text.lines().count()
            );
        }
    }
    if !a.target.json {
        for n in &report.notes {
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

//! `l3agent iptables show`

use std::path::PathBuf;

use clap::Args;
use l3agent_iptables::plan::{owns_chain, plan_family};
use l3agent_iptables::{IptablesModel, ModelOptions, WrapName};
use serde_json::json;

use super::{load_rules, open, print_json, Failure, Target};

/// Arguments of `iptables show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub target: Target,
    /// Also show the drift between the kernel and this rules file (what apply would send).
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// Wrap name whose chains to show, when no --rules file names it.
    #[arg(long, default_value = "l3agent")]
    wrap_name: String,
}

/// Runs `iptables show`.
pub fn run(a: ShowArgs) -> Result<(), Failure> {
    let model = match &a.rules {
        Some(p) => load_rules(p)?,
        None => {
            let wrap =
                WrapName::new(&a.wrap_name).map_err(|e| Failure::invalid(format!("--{e}")))?;
            IptablesModel::new(wrap, ModelOptions::default())
        }
    };
    let manager = open(&a.target, model)?;
    let wrap = manager.model().wrap().clone();
    let mut out = Vec::new();
    for family in manager.model().families() {
        let Some(state) = manager.read(family)? else {
            return Err(Failure::failed("the namespace vanished"));
        };
        let mut chains = Vec::new();
        for (table, kt) in &state.tables {
            for c in kt.chains() {
                let own = owns_chain(&wrap, &state.wraps, &c.name);
                let rules: Vec<&str> = c
                    .rules
                    .iter()
                    .filter(|r| own || r.is_marked_by(wrap.as_str()))
                    .map(|r| r.spec.as_str())
                    .collect();
                if own || !rules.is_empty() {
                    chains.push(
                        json!({"table": table, "chain": c.name, "owned": own, "rules": rules}),
                    );
                }
            }
        }
        let drift = a.rules.as_ref().map(|_| {
            let plan = plan_family(&state, manager.model(), family, None);
            plan.render()
                .0
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        });
        out.push((family, chains, drift));
    }
    if a.target.json {
        let fams: serde_json::Map<String, serde_json::Value> = out
            .iter()
            .map(|(f, c, d)| (f.to_string(), json!({"chains": c, "drift": d})))
            .collect();
        print_json(
            &json!({"wrap_name": wrap.as_str(), "backend": manager.runner().backend().to_string(), "families": fams}),
        );
        return Ok(());
    }
    for (family, chains, drift) in out {
        println!(
            "# {family} ({} backend), wrap name {wrap}",
            manager.runner().backend()
        );
        for c in chains {
            let owned = if c["owned"] == true {
                "ours"
            } else {
                "shared: our rules only"
            };
            println!(
                "{} {} ({owned})",
                c["table"].as_str().unwrap_or(""),
                c["chain"].as_str().unwrap_or("")
            );
            for r in c["rules"].as_array().into_iter().flatten() {
                println!("    {}", r.as_str().unwrap_or(""));
            }
        }
        match drift {
            Some(d) if d.is_empty() => println!("# no drift: the kernel matches the rules file"),
            Some(d) => {
                println!("# drift: apply would send {} line(s):", d.len());
                for l in d {
                    println!("    {l}");
                }
            }
            None => {}
        }
    }
    Ok(())
}

//! The bodies of l3agent's fuzz targets (the `fuzz_targets/*.rs` binaries are one line each),
//! so that the YAML and JSON targets of one document share their checks.
//!
//! Every target calls the exact functions l3agent uses on outside text and checks what must
//! hold for any input: no panic (libFuzzer reports it), and the properties asserted below.

use std::collections::BTreeSet;

use l3agent_doc::{Format, Limits};
use l3agent_router::alloc::{Allocator, LinkLocalPool, Pool, RangePool};
use l3agent_router::compile::{self, Allocations, HostFacts, Needs};
use l3agent_router::config::{ConfigDoc, HostConfig};
use l3agent_router::spec::names;

pub mod state;

/// Host config: the document reader, validation, and (when it validates) the compiler with
/// allocations made the way `records::allocate` makes them, minus the file.
pub fn router_config(data: &[u8], format: Format) {
    let Ok(doc) = l3agent_doc::parse::<ConfigDoc>(data, format, &Limits::default(), "routers: []")
    else {
        return;
    };
    let Ok(cfg) = doc.validate() else {
        return;
    };
    // `apply` saves the validated doc as JSON records (applied/agent.json, router-<id>.json)
    // and `status` validates them again: what validated once must validate the same way.
    let again = ConfigDoc {
        agent: json_round_trip(&cfg.doc.agent),
        routers: cfg.doc.routers.iter().map(json_round_trip).collect(),
    };
    let again = again.validate().unwrap_or_else(|e| {
        panic!("a valid config no longer validates from its JSON records: {e:?}")
    });
    assert_eq!(
        again.agent, cfg.agent,
        "agent changed through its JSON record"
    );
    assert_eq!(
        again.routers, cfg.routers,
        "routers changed through their JSON records"
    );

    let facts = HostFacts {
        random_fully: data.len() % 2 == 1,
    };
    let needs = compile::needs(&cfg);
    check_compiled(&cfg, &compile::compile(&cfg, &allocate(&needs), &facts));
    // Missing allocations must fail the DVR routers that need them, never panic.
    check_compiled(
        &cfg,
        &compile::compile(&cfg, &Allocations::default(), &facts),
    );
}

fn json_round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(v: &T) -> T {
    let bytes = serde_json::to_vec(v).expect("a config record serializes");
    serde_json::from_slice(&bytes).expect("a config record reads back")
}

/// Every admin-up router is either compiled into its namespace or listed as failed, and every
/// namespace's rules render into `iptables-restore` input without a NUL.
fn check_compiled(cfg: &HostConfig, spec: &l3agent_router::spec::HostSpec) {
    for r in cfg.routers.iter().filter(|r| r.admin_state_up) {
        let compiled = spec.namespaces.contains_key(&names::router_ns(&r.id));
        let failed = spec.failed.contains_key(&r.id);
        assert!(
            compiled != failed,
            "router {}: compiled={compiled} failed={failed}",
            r.id
        );
    }
    for ns in spec.namespaces.values() {
        for family in [l3agent_iptables::Family::V4, l3agent_iptables::Family::V6] {
            let text = compile::restore_text(&ns.iptables, family);
            assert!(!text.contains('\0'), "NUL in restore input: {text:?}");
        }
    }
}

/// The allocations `needs` asks for, from empty allocators (what `records::allocate` does on
/// a fresh state directory), with the same keys.
pub fn allocate(needs: &Needs) -> Allocations {
    let mut link = Allocator::empty("fip-linklocal-networks", LinkLocalPool);
    let mut prio = Allocator::empty("fip-priorities", RangePool::FIP_PRIORITIES);
    let mut tables = Allocator::empty("snat-tables", RangePool::SNAT_TABLES);
    let mut out = Allocations::default();
    for r in &needs.link_local {
        out.link_local.insert(
            r.clone(),
            link.allocate(r.as_str()).expect("router id is a key"),
        );
    }
    for f in &needs.fip_priorities {
        let v = prio.allocate(&f.to_string()).expect("address is a key");
        out.fip_priorities
            .insert(*f, RangePool::FIP_PRIORITIES.start + v);
    }
    for (r, p) in &needs.snat_tables {
        let v = tables.allocate(&format!("{r}.{p}")).expect("ids are a key");
        out.snat_tables
            .insert((r.clone(), p.clone()), RangePool::SNAT_TABLES.start + v);
    }
    out
}

/// Rules file: the document reader, then the model (only `RulesFile` and `into_model`, the
/// stable surface of `l3agent-iptables`).
pub fn rules_file(data: &[u8], format: Format) {
    if let Ok(file) = l3agent_doc::parse::<l3agent_iptables::spec::RulesFile>(
        data,
        format,
        &Limits::default(),
        "ipv4: {}",
    ) {
        let _ = file.into_model();
    }
}

/// `iptables-restore`'s stderr: the first line says how many lines the input had (so the
/// fuzzer explores the bound), the rest is the text. A line is only ever named inside it.
pub fn restore_error(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (first, stderr) = text.split_once('\n').unwrap_or(("", text));
    let input_lines = first.trim().parse::<usize>().unwrap_or(first.len());
    if let Some(n) = l3agent_iptables::restore_error::failing_line(stderr, input_lines) {
        assert!((1..=input_lines).contains(&n), "line {n} of {input_lines}");
        assert!(
            stderr.contains(&n.to_string()),
            "line {n} is not in the text"
        );
    }
}

/// An allocator file read, rendered and read again gives the same allocations.
pub fn allocator_round_trip<P: Pool + Copy>(bytes: &[u8], pool: P) {
    let Ok(a) = Allocator::parse("f", bytes, pool) else {
        return;
    };
    let b = Allocator::parse("f", a.render().as_bytes(), pool).expect("a rendered file parses");
    let entries = |x: &Allocator<P>| {
        x.entries()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<Vec<_>>()
    };
    assert_eq!(entries(&a), entries(&b));
    let values: BTreeSet<u32> = a.entries().map(|(_, v)| v).collect();
    assert_eq!(values.len(), a.entries().count(), "a value allocated twice");
    assert!(values.iter().all(|v| *v < pool.size()));
}

//! The router's daemons over the recording fake (no root): radvd for IPv6 internal subnets,
//! haproxy for the metadata proxy; started once their namespace holds its devices, addresses
//! and rules, reloaded when their config changes, started again when they died (the
//! supervisor's respawn is the reconciler's drift repair), stopped before their namespace is
//! deleted, and found and stopped when their router is gone from every record.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

mod common;

use common::{legacy_router, state_dir, world};
use l3agent_router::compile::HostFacts;
use l3agent_router::config::{ConfigDoc, HostConfig};
use l3agent_router::fake::{self, FakeDaemon, SharedWorld};
use l3agent_router::host::{self, ApplyOptions, Health, HostReport, RouterStatus};
use l3agent_supervise::Service;
use l3agent_types::{NetnsName, RouterId};
use serde_json::{json, Value};

const ROUTER: &str = "87c7c2ae-d0ba-4691-820c-8053abf50b8d";
const NS: &str = "qrouter-87c7c2ae-d0ba-4691-820c-8053abf50b8d";

fn facts() -> HostFacts {
    HostFacts { random_fully: true }
}

fn config(state: &std::path::Path, agent: Value, routers: &[Value]) -> HostConfig {
    let mut a = json!({"mode": "legacy", "host": "host-a", "state_path": state, "bridges": {
        "90e4912c-0eb8-4be4-a793-e6a3bba6ae8b": "br-t1",
        "c6910e18-fb1f-4988-9af4-211a8c2e2926": "br-t2",
        "65566f91-133a-44ff-87f5-ecffc1193d3d": "br-ex"}});
    for (k, v) in agent.as_object().unwrap() {
        a[k] = v.clone();
    }
    let doc: ConfigDoc = serde_json::from_value(json!({"agent": a, "routers": routers})).unwrap();
    doc.validate().unwrap_or_else(|e| panic!("{e:#?}"))
}

/// The example router with an IPv6 SLAAC subnet on its first interface.
fn v6_router(dns: &[&str]) -> Value {
    let mut r = legacy_router();
    let qr = &mut r["_interfaces"][0];
    qr["subnets"].as_array_mut().unwrap().push(json!({
        "id": "5d4c4b2e-1f7a-4c59-9a3e-2b1c0d9e8f71", "cidr": "2001:db8:1::/64",
        "gateway_ip": "2001:db8:1::1", "ipv6_ra_mode": "slaac", "dns_nameservers": dns}));
    qr["fixed_ips"].as_array_mut().unwrap().push(json!({
        "ip_address": "2001:db8:1::1", "subnet_id": "5d4c4b2e-1f7a-4c59-9a3e-2b1c0d9e8f71"}));
    r
}

fn apply(w: &SharedWorld, cfg: &HostConfig) -> HostReport {
    let opts = ApplyOptions::new(facts(), Arc::new(AtomicBool::new(false)));
    host::apply(cfg, &opts, &fake::sides(w)).expect("apply")
}

fn plan(w: &SharedWorld, cfg: &HostConfig) -> HostReport {
    host::plan(cfg, &facts(), &fake::sides(w)).expect("plan")
}

fn changes(r: &HostReport) -> Vec<String> {
    r.changes().map(ToString::to_string).collect()
}

fn daemon(w: &SharedWorld, service: Service) -> Option<FakeDaemon> {
    let id = RouterId::new("id", ROUTER).unwrap();
    w.lock().unwrap().daemons.get(&(id, service)).cloned()
}

fn log(w: &SharedWorld) -> Vec<String> {
    std::mem::take(&mut w.lock().unwrap().log)
}

#[test]
fn radvd_runs_for_ipv6_subnets_and_follows_the_config() {
    let w = world();
    let state = state_dir();
    let cfg = config(&state, json!({}), &[v6_router(&["2001:db8:1::53"])]);
    let planned = changes(&plan(&w, &cfg));
    let r = apply(&w, &cfg);
    assert!(!r.failed(), "{r:#?}");
    assert_eq!(planned, changes(&r), "plan != apply");
    let text = changes(&r).join("\n");
    assert!(
        text.contains(&format!("{NS}: start radvd of router {ROUTER}")),
        "{text}"
    );
    // Started after its device and addresses, never before.
    let ops = log(&w);
    let pos = |s: &str| ops.iter().position(|l| l.contains(s)).unwrap_or(usize::MAX);
    assert!(pos("add port qr-081ed401-2a") < pos("start "), "{ops:#?}");
    assert!(pos("iptables") < pos("start "), "{ops:#?}");
    let d = daemon(&w, Service::Radvd).expect("radvd runs");
    let conf = String::from_utf8(d.config).unwrap();
    assert!(conf.contains("interface qr-081ed401-2a"), "{conf}");
    assert!(conf.contains("prefix 2001:db8:1::/64"), "{conf}");
    assert!(conf.contains("RDNSS  2001:db8:1::53  {};"), "{conf}");
    assert!(
        daemon(&w, Service::Haproxy).is_none(),
        "no metadata proxy asked for"
    );
    assert!(!plan(&w, &cfg).changed());

    // A DNS server more: the running radvd is reloaded, not restarted.
    let cfg2 = config(
        &state,
        json!({}),
        &[v6_router(&["2001:db8:1::53", "2001:db8:1::54"])],
    );
    let r = apply(&w, &cfg2);
    assert_eq!(
        changes(&r),
        vec![format!(
            "{NS}: reload radvd of router {ROUTER} (config changed)"
        )]
    );
    assert!(
        String::from_utf8(daemon(&w, Service::Radvd).unwrap().config)
            .unwrap()
            .contains("2001:db8:1::54")
    );

    // It died: status sees it, a plain apply starts it again (the respawn).
    w.lock()
        .unwrap()
        .daemons
        .values_mut()
        .for_each(|d| d.running = false);
    let health = host::status(&state, &fake::sides(&w)).unwrap();
    assert_eq!(health[0].health, Health::Drift, "{health:#?}");
    let r = apply(&w, &cfg2);
    assert_eq!(
        changes(&r),
        vec![format!("{NS}: start radvd of router {ROUTER}")]
    );
    assert!(daemon(&w, Service::Radvd).unwrap().running);

    // The IPv6 subnet goes: radvd is stopped; the router stays.
    let cfg3 = config(&state, json!({}), &[legacy_router()]);
    let r = apply(&w, &cfg3);
    assert!(
        changes(&r).contains(&format!("{NS}: stop radvd of router {ROUTER}")),
        "{r:#?}"
    );
    assert!(daemon(&w, Service::Radvd).is_none());

    // Disabled by the operator: no radvd even with IPv6 subnets.
    let off = json!({"router_advertisements": {"enabled": false}});
    let cfg4 = config(&state, off, &[v6_router(&[])]);
    let r = apply(&w, &cfg4);
    assert!(!changes(&r).iter().any(|c| c.contains("radvd")), "{r:#?}");
}

#[test]
fn the_metadata_proxy_runs_per_router_with_its_rules_and_goes_before_its_namespace() {
    let w = world();
    let state = state_dir();
    let md = json!({"metadata_proxy": {"socket": "/var/lib/neutron/metadata_proxy"}});
    let cfg = config(&state, md.clone(), &[legacy_router()]);
    let r = apply(&w, &cfg);
    assert!(!r.failed(), "{r:#?}");
    let conf = String::from_utf8(daemon(&w, Service::Haproxy).expect("haproxy").config).unwrap();
    assert!(conf.contains(&format!(
        "http-request set-header X-Neutron-Router-ID {ROUTER}"
    )));
    assert!(
        conf.contains("server metadata /var/lib/neutron/metadata_proxy"),
        "{conf}"
    );
    assert!(conf.contains("bind :::9697"), "{conf}");
    let ns = NetnsName::new("ns", NS).unwrap();
    let rules = w.lock().unwrap().namespaces[&ns].iptables.clone();
    let v4 = &rules[&l3agent_iptables::Family::V4];
    for rule in [
        "-A neutron-l3-agent-PREROUTING -d 169.254.169.254/32 -i qr-+ -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 9697",
        "-A neutron-l3-agent-INPUT -m mark --mark 0x1/0xffff -j ACCEPT",
        "-A neutron-l3-agent-INPUT -p tcp -m tcp --dport 9697 -j DROP",
        "-A neutron-l3-agent-PREROUTING -d 169.254.169.254/32 -i qr-+ -p tcp -m tcp --dport 80 -j MARK --set-xmark 0x1/0xffff",
        "-A neutron-l3-agent-scope -m mark --mark 0x1/0xffff -j DROP",
    ] {
        assert!(v4.contains(rule), "missing {rule}\n{v4}");
    }
    let v6 = &rules[&l3agent_iptables::Family::V6];
    assert!(
        v6.contains(
            "-d fe80::a9fe:a9fe/128 -i qr-+ -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 9697"
        ),
        "{v6}"
    );

    // The router is removed: its proxy is stopped before its namespace goes.
    log(&w);
    let r = apply(&w, &config(&state, md, &[]));
    assert!(!r.failed(), "{r:#?}");
    assert_eq!(r.routers[0].status, RouterStatus::Removed);
    let ops = log(&w);
    let pos = |s: &str| ops.iter().position(|l| l.contains(s)).unwrap_or(usize::MAX);
    assert!(pos("stop ") < pos("ip netns del"), "{ops:#?}");
    assert!(daemon(&w, Service::Haproxy).is_none());
}

#[test]
fn the_metadata_rules_keep_the_drop_of_marked_requests_without_a_proxy() {
    let w = world();
    let state = state_dir();
    let cfg = config(&state, json!({}), &[legacy_router()]);
    apply(&w, &cfg);
    let ns = NetnsName::new("ns", NS).unwrap();
    let v4 = w.lock().unwrap().namespaces[&ns].iptables[&l3agent_iptables::Family::V4].clone();
    assert!(
        v4.contains("-A neutron-l3-agent-scope -m mark --mark 0x1/0xffff -j DROP"),
        "{v4}"
    );
    assert!(!v4.contains("REDIRECT"), "{v4}");
    assert!(daemon(&w, Service::Haproxy).is_none());
}

#[test]
fn daemons_of_routers_gone_from_every_record_are_stopped() {
    let w = world();
    let state = state_dir();
    let md = json!({"metadata_proxy": {"socket": "/run/md.sock"}});
    apply(&w, &config(&state, md.clone(), &[legacy_router()]));
    // A daemon of a router l3agent has no record of (its records were lost after a crash).
    let stray = RouterId::new("id", "0f0e0d0c-0b0a-4908-8706-050403020100").unwrap();
    let stray_ns = NetnsName::new("ns", "qrouter-0f0e0d0c-0b0a-4908-8706-050403020100").unwrap();
    w.lock().unwrap().daemons.insert(
        (stray.clone(), Service::Radvd),
        FakeDaemon {
            ns: stray_ns,
            config: b"interface x {};".to_vec(),
            running: true,
            synced: None,
        },
    );
    let r = apply(&w, &config(&state, md.clone(), &[legacy_router()]));
    assert!(!r.failed(), "{r:#?}");
    assert!(
        changes(&r)
            .iter()
            .any(|c| c.contains(&format!("stop radvd of router {stray}"))),
        "{r:#?}"
    );
    assert!(!w
        .lock()
        .unwrap()
        .daemons
        .contains_key(&(stray, Service::Radvd)));
    // `destroy` stops every daemon.
    let stop = Arc::new(AtomicBool::new(false));
    let r = host::destroy(&state, None, &stop, &fake::sides(&w)).expect("destroy");
    assert!(!r.failed(), "{r:#?}");
    assert!(w.lock().unwrap().daemons.is_empty());
}

#[test]
fn a_daemon_that_fails_to_start_fails_its_router_and_the_next_apply_retries() {
    let w = world();
    let state = state_dir();
    let cfg = config(&state, json!({}), &[v6_router(&[])]);
    w.lock().unwrap().fail_on = Some(format!("start {ROUTER}.radvd"));
    let r = apply(&w, &cfg);
    assert!(r.failed(), "{r:#?}");
    assert!(daemon(&w, Service::Radvd).is_none());
    let r = apply(&w, &cfg);
    assert!(!r.failed(), "{r:#?}");
    assert!(daemon(&w, Service::Radvd).is_some_and(|d| d.running));
}

const HA_NET: &str = "5b0c2e4a-8d1f-4e3b-9a6c-7d2e1f0a3b4c";

/// The example router as an HA router (VRID 7), this host's HA port 169.254.192.5/18.
fn ha_router() -> Value {
    let mut r = legacy_router();
    r["ha"] = json!(true);
    r["ha_vr_id"] = json!(7);
    r["_ha_interface"] = json!({
        "id": "1111aaaa-bbbb-4ccc-8ddd-eeeeffff0000", "network_id": HA_NET,
        "mac_address": "fa:16:3e:00:00:07",
        "fixed_ips": [{"ip_address": "169.254.192.5", "prefixlen": 18,
                       "subnet_id": "2222aaaa-bbbb-4ccc-8ddd-eeeeffff0000"}],
        "subnets": [{"id": "2222aaaa-bbbb-4ccc-8ddd-eeeeffff0000", "cidr": "169.254.192.0/18",
                     "gateway_ip": null}]});
    r
}

fn ha_world() -> SharedWorld {
    std::sync::Arc::new(std::sync::Mutex::new(fake::World::with_bridges(&[
        "br-t1", "br-t2", "br-ex", "br-ha",
    ])))
}

fn ha_config(state: &std::path::Path, agent: Value, routers: &[Value]) -> HostConfig {
    let mut a = agent;
    a["bridges"] = json!({
        "90e4912c-0eb8-4be4-a793-e6a3bba6ae8b": "br-t1",
        "c6910e18-fb1f-4988-9af4-211a8c2e2926": "br-t2",
        "65566f91-133a-44ff-87f5-ecffc1193d3d": "br-ex",
        HA_NET: "br-ha"});
    config(state, a, routers)
}

/// keepalived on this host becomes master (adds the primary VIP and the router's addresses)
/// or backup (removes them).
fn vrrp(w: &SharedWorld, master: bool) {
    let ns = NetnsName::new("ns", NS).unwrap();
    let mut w = w.lock().unwrap();
    let n = w.namespaces.get_mut(&ns).unwrap();
    let vips = [
        ("ha-1111aaaa-bb", "169.254.0.7/24"),
        ("qr-081ed401-2a", "192.0.2.4/24"),
        ("qg-184a6791-c4", "203.0.113.4/24"),
    ];
    for (dev, net) in vips {
        let key = (dev.to_owned(), net.parse().unwrap());
        if master {
            n.addresses.insert(key);
        } else {
            n.addresses.remove(&key);
        }
    }
}

#[test]
fn an_ha_router_leaves_addresses_and_routes_to_keepalived_and_runs_master_only_daemons_on_the_master(
) {
    let w = ha_world();
    let state = state_dir();
    let md = json!({"metadata_proxy": {"socket": "/run/md.sock"},
                    "ha": {"vrrp_auth_password": "s3cret"}});
    let cfg = ha_config(&state, md, &[ha_router()]);
    let r = apply(&w, &cfg);
    assert!(!r.failed(), "{r:#?}");
    assert_eq!(
        r.routers[0].ha_state,
        Some(l3agent_router::spec::HaState::Backup)
    );
    let text = changes(&r).join("\n");
    assert!(text.contains("start keepalived"), "{text}");
    assert!(
        !text.contains("start haproxy"),
        "a backup runs no proxy: {text}"
    );
    assert!(
        !text.contains("ip addr add 192.0.2.4/24"),
        "keepalived adds the router's addresses: {text}"
    );
    assert!(
        text.contains("169.254.192.5/18"),
        "the ha- port's own address: {text}"
    );
    assert!(!text.contains("ip route replace default"), "{text}");
    let conf = String::from_utf8(daemon(&w, Service::Keepalived).unwrap().config).unwrap();
    for line in [
        "virtual_router_id 7",
        "interface ha-1111aaaa-bb",
        "169.254.0.7/24 dev ha-1111aaaa-bb",
        "192.0.2.4/24 dev qr-081ed401-2a no_track",
        "203.0.113.2/32 dev qg-184a6791-c4 no_track",
        "0.0.0.0/0 via 203.0.113.1 dev qg-184a6791-c4 no_track protocol static",
        "auth_pass s3cret",
    ] {
        assert!(conf.contains(line), "missing {line:?} in\n{conf}");
    }
    assert!(!plan(&w, &cfg).changed(), "{:#?}", changes(&plan(&w, &cfg)));

    // keepalived makes this host the master: the proxy starts and IPv6 forwards; nothing
    // keepalived added is taken away.
    vrrp(&w, true);
    let r = apply(&w, &cfg);
    assert_eq!(
        r.routers[0].ha_state,
        Some(l3agent_router::spec::HaState::Master)
    );
    let text = changes(&r).join("\n");
    assert!(text.contains("start haproxy"), "{text}");
    assert!(text.contains("net.ipv6.conf.all.forwarding=1"), "{text}");
    assert!(!text.contains("ip addr del"), "{text}");
    assert!(!plan(&w, &cfg).changed());

    // Back to backup: the proxy stops, IPv6 forwarding goes off.
    vrrp(&w, false);
    let r = apply(&w, &cfg);
    let text = changes(&r).join("\n");
    assert!(text.contains("stop haproxy"), "{text}");
    assert!(text.contains("net.ipv6.conf.all.forwarding=0"), "{text}");
    assert!(
        !text.contains("keepalived"),
        "keepalived is left alone: {text}"
    );
}

#[test]
fn ha_settings_and_dicts_are_checked() {
    let state = state_dir();
    let bad = |agent: Value, router: Value| -> Vec<String> {
        let mut a = agent;
        a["mode"] = json!("legacy");
        a["host"] = json!("host-a");
        a["state_path"] = json!(state);
        a["bridges"] = json!({
            "90e4912c-0eb8-4be4-a793-e6a3bba6ae8b": "br-t1",
            "c6910e18-fb1f-4988-9af4-211a8c2e2926": "br-t2",
            "65566f91-133a-44ff-87f5-ecffc1193d3d": "br-ex", HA_NET: "br-ha"});
        let doc: ConfigDoc =
            serde_json::from_value(json!({"agent": a, "routers": [router]})).unwrap();
        doc.validate()
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    let e = bad(
        json!({"ha": {"vrrp_auth_password": "far too long"}}),
        ha_router(),
    );
    assert!(e[0].starts_with("agent.ha.vrrp_auth_password"), "{e:?}");
    assert!(
        !e[0].contains("far too long"),
        "the password is never echoed: {e:?}"
    );
    let mut r = ha_router();
    r["ha_vr_id"] = json!(255);
    assert_eq!(
        bad(json!({}), r),
        vec![format!("routers[0].ha_vr_id: 255 is outside 1..254")]
    );
    let mut r = ha_router();
    r.as_object_mut().unwrap().remove("_ha_interface");
    assert!(bad(json!({}), r)[0].starts_with("routers[0]._ha_interface"));
    let mut r = ha_router();
    r["distributed"] = json!(true);
    let e = bad(json!({}), r);
    assert!(e.iter().any(|x| x.contains("DVR+HA")), "{e:?}");
}

/// `agent.ha` with conntrackd state sync on.
fn conntrackd_on() -> Value {
    json!({"ha": {"conntrackd_enabled": true}})
}

/// The log lines of conntrackd sync commands (`NS: conntrackd -C CONF OPTION`), as the
/// options only.
fn sync_commands(log: &[String]) -> Vec<String> {
    log.iter()
        .filter(|l| l.starts_with(&format!("{NS}: conntrackd -C ")))
        .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        .collect()
}

fn position(log: &[String], what: &str) -> usize {
    log.iter()
        .position(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no {what:?} in {log:#?}"))
}

#[test]
fn with_conntrackd_enabled_an_ha_router_starts_conntrackd_before_keepalived_with_neutrons_config() {
    let w = ha_world();
    let state = state_dir();
    let cfg = ha_config(&state, conntrackd_on(), &[ha_router()]);
    let r = apply(&w, &cfg);
    assert!(!r.failed(), "{r:#?}");
    let log = log(&w);
    let conntrackd = position(&log, &format!("start {ROUTER}.conntrackd in {NS}"));
    let keepalived = position(&log, &format!("start {ROUTER}.keepalived in {NS}"));
    assert!(conntrackd < keepalived, "{log:#?}");
    assert!(
        r.routers[0].daemons.contains(&Service::Conntrackd),
        "{r:#?}"
    );
    let conf = String::from_utf8(daemon(&w, Service::Conntrackd).unwrap().config).unwrap();
    let dir = state.join("daemons");
    for line in [
        format!("LockFile {}/{ROUTER}.conntrackd.lock", dir.display()),
        format!("Path {}/{ROUTER}.conntrackd.ctl", dir.display()),
        "IPv4_address 169.254.192.5".to_owned(),
        "IPv4_interface 169.254.192.5".to_owned(),
        "IPv4_address 225.0.0.50".to_owned(),
        "Group 3787".to_owned(),
        "Interface ha-1111aaaa-bb".to_owned(),
    ] {
        assert!(conf.contains(&line), "missing {line:?} in\n{conf}");
    }
    assert!(conf.starts_with("\nGeneral {\n"), "{conf}");
}

#[test]
fn conntrackd_is_synced_once_per_vrrp_transition_and_not_in_a_steady_state() {
    let w = ha_world();
    let state = state_dir();
    let cfg = ha_config(&state, conntrackd_on(), &[ha_router()]);
    let r = apply(&w, &cfg);
    assert!(!r.failed(), "{r:#?}");
    let text = changes(&r).join("\n");
    assert!(
        text.contains(&format!(
            "{NS}: conntrackd sync of router {ROUTER} as backup"
        )),
        "{text}"
    );
    let first = log(&w);
    assert_eq!(sync_commands(&first), ["-t", "-n"], "{first:#?}");
    let conf = state.join(format!("daemons/{ROUTER}.conntrackd.conf"));
    assert!(
        first.contains(&format!("{NS}: conntrackd -C {} -t", conf.display())),
        "{first:#?}"
    );
    assert!(
        position(&first, "start") < position(&first, "conntrackd -C"),
        "the sync runs once conntrackd runs: {first:#?}"
    );

    // Steady state: nothing planned, nothing run (an agent restart finds the same).
    assert!(!plan(&w, &cfg).changed(), "{:#?}", changes(&plan(&w, &cfg)));
    apply(&w, &cfg);
    assert_eq!(sync_commands(&log(&w)), Vec::<String>::new());

    // keepalived makes this host the master: commit, flush, resync, bulk send, in order.
    vrrp(&w, true);
    let p = plan(&w, &cfg);
    assert!(
        changes(&p)
            .iter()
            .any(|c| c.contains("conntrackd sync") && c.contains("as primary")),
        "{:#?}",
        changes(&p)
    );
    let r = apply(&w, &cfg);
    assert!(!r.failed(), "{r:#?}");
    assert_eq!(sync_commands(&log(&w)), ["-c", "-f", "-R", "-B"]);
    apply(&w, &cfg);
    assert_eq!(sync_commands(&log(&w)), Vec::<String>::new());

    // And back.
    vrrp(&w, false);
    apply(&w, &cfg);
    assert_eq!(sync_commands(&log(&w)), ["-t", "-n"]);
    apply(&w, &cfg);
    assert_eq!(sync_commands(&log(&w)), Vec::<String>::new());
}

#[test]
fn a_conntrackd_started_again_is_synced_again_and_a_failing_sync_command_is_ignored() {
    let w = ha_world();
    let state = state_dir();
    let cfg = ha_config(&state, conntrackd_on(), &[ha_router()]);
    apply(&w, &cfg);
    vrrp(&w, true);
    apply(&w, &cfg);
    log(&w);
    // conntrackd died: it is started again (empty caches) and synced for the current state,
    // even though that state did not change.
    let id = RouterId::new("id", ROUTER).unwrap();
    w.lock()
        .unwrap()
        .daemons
        .get_mut(&(id, Service::Conntrackd))
        .unwrap()
        .running = false;
    w.lock().unwrap().fail_on = Some("conntrackd.conf -f".into());
    let r = apply(&w, &cfg);
    assert!(!r.failed(), "a failing sync command fails nothing: {r:#?}");
    let log = log(&w);
    assert!(
        log.iter()
            .any(|l| l == &format!("start {ROUTER}.conntrackd in {NS}")),
        "{log:#?}"
    );
    assert_eq!(
        sync_commands(&log),
        ["-c", "-f", "-R", "-B"],
        "the rest still run"
    );
    assert!(!plan(&w, &cfg).changed(), "{:#?}", changes(&plan(&w, &cfg)));
}

#[test]
fn conntrackd_stops_after_keepalived_with_its_router_and_when_turned_off() {
    let w = ha_world();
    let state = state_dir();
    let cfg = ha_config(&state, conntrackd_on(), &[ha_router()]);
    apply(&w, &cfg);
    log(&w);
    // Turned off: conntrackd stops, keepalived stays.
    let off = ha_config(&state, json!({}), &[ha_router()]);
    let r = apply(&w, &off);
    assert!(!r.failed(), "{r:#?}");
    let text = changes(&r).join("\n");
    assert!(text.contains("stop conntrackd"), "{text}");
    assert!(!text.contains("keepalived"), "{text}");
    assert!(daemon(&w, Service::Conntrackd).is_none());
    // On again, then the router goes: keepalived stops first, then conntrackd.
    apply(&w, &cfg);
    log(&w);
    let r = apply(&w, &ha_config(&state, conntrackd_on(), &[]));
    assert!(!r.failed(), "{r:#?}");
    let log = log(&w);
    let keepalived = position(&log, &format!("stop {ROUTER}.keepalived"));
    let conntrackd = position(&log, &format!("stop {ROUTER}.conntrackd"));
    assert!(keepalived < conntrackd, "{log:#?}");
    assert!(daemon(&w, Service::Conntrackd).is_none());
    assert!(daemon(&w, Service::Keepalived).is_none());
}

#[test]
fn without_conntrackd_enabled_nothing_of_conntrackd_runs() {
    let w = ha_world();
    let state = state_dir();
    let cfg = ha_config(&state, json!({}), &[ha_router()]);
    apply(&w, &cfg);
    vrrp(&w, true);
    apply(&w, &cfg);
    vrrp(&w, false);
    apply(&w, &cfg);
    let log = log(&w);
    assert!(!log.iter().any(|l| l.contains("conntrackd")), "{log:#?}");
    assert!(daemon(&w, Service::Conntrackd).is_none());
}

#[test]
fn conntrackd_settings_are_checked_with_their_paths() {
    let state = state_dir();
    let bad = |ha: Value, state: &std::path::Path| -> Vec<String> {
        let a = json!({"mode": "legacy", "host": "host-a", "state_path": state, "ha": ha,
            "bridges": {
                "90e4912c-0eb8-4be4-a793-e6a3bba6ae8b": "br-t1",
                "c6910e18-fb1f-4988-9af4-211a8c2e2926": "br-t2",
                "65566f91-133a-44ff-87f5-ecffc1193d3d": "br-ex", HA_NET: "br-ha"}});
        let doc: ConfigDoc =
            serde_json::from_value(json!({"agent": a, "routers": [ha_router()]})).unwrap();
        match doc.validate() {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    };
    let on = |extra: Value| {
        let mut h = json!({"conntrackd_enabled": true});
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        h
    };
    let starts = |e: Vec<String>, path: &str| {
        assert!(
            e.len() == 1 && e[0].starts_with(path),
            "expected one error at {path}: {e:?}"
        );
    };
    starts(
        bad(on(json!({"conntrackd_hashsize": 0})), &state),
        "agent.ha.conntrackd_hashsize",
    );
    starts(
        bad(on(json!({"conntrackd_rcvsocketbuffer": 0})), &state),
        "agent.ha.conntrackd_rcvsocketbuffer",
    );
    starts(
        bad(
            on(json!({"conntrackd_ipv4_mcast_addr": "192.0.2.1"})),
            &state,
        ),
        "agent.ha.conntrackd_ipv4_mcast_addr",
    );
    starts(
        bad(
            on(json!({"conntrackd_ipv4_mcast_addr": "not an address"})),
            &state,
        ),
        "agent.ha.conntrackd_ipv4_mcast_addr",
    );
    starts(
        bad(on(json!({"conntrackd_group": 65282})), &state),
        "agent.ha.conntrackd_group",
    );
    assert_eq!(
        bad(on(json!({"conntrackd_group": 65281})), &state),
        Vec::<String>::new()
    );
    // The control socket must fit 107 characters for a 36-character router id.
    let long = std::path::PathBuf::from(format!(
        "/{}",
        "s".repeat(l3agent_router::config::CONNTRACKD_MAX_STATE_PATH)
    ));
    let e = bad(on(json!({})), &long);
    starts(e.clone(), "agent.ha.conntrackd_enabled");
    assert!(e[0].contains("107"), "{e:?}");
    let fits = std::path::PathBuf::from(format!(
        "/{}",
        "s".repeat(l3agent_router::config::CONNTRACKD_MAX_STATE_PATH - 1)
    ));
    assert_eq!(bad(on(json!({})), &fits), Vec::<String>::new());
    // Off: the knobs are not looked at, the path not limited.
    assert_eq!(
        bad(json!({"conntrackd_hashsize": 0}), &long),
        Vec::<String>::new()
    );
}

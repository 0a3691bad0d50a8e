//! The agent's reloads of its host config file ([`Reloader`]).

use std::path::Path;

use l3agent_doc::splice::{ArrayIndex, Splice};
use l3agent_router::config::{ConfigDoc, HostConfig, RouterDoc};

use super::{doc_failure, limits, parse_doc, validated, Failure, EXPLICIT_HOST};

/// The agent's loads of its host config file. A JSON file is kept, indexed by router dict
/// ([`l3agent_doc::splice`]), with the config it gave: a new version that differs from it
/// inside one router dict only is read as the config in force with that dict replaced —
/// the same config, validated the same way, with the same problems — without parsing the
/// rest of the file (at 1,000 routers, 1.4 MB: milliseconds an event no longer waits for).
/// Anything else is loaded whole.
#[derive(Default)]
pub(super) struct Reloader {
    last: std::sync::Mutex<Last>,
}

/// What a [`Reloader`] keeps between loads.
#[derive(Default)]
struct Last {
    /// The file as last loaded, indexed, with the config it gave.
    kept: Option<(ArrayIndex, HostConfig)>,
    /// The memory of the version before, for the next read (a megabyte buffer whose pages
    /// are there, not a fresh one per event).
    spare: Vec<u8>,
}

impl Reloader {
    /// Loads `path`: the first config, or a new version of `in_force`.
    pub(super) fn load(
        &self,
        path: &Path,
        in_force: Option<&HostConfig>,
    ) -> Result<HostConfig, Failure> {
        let mut laps = l3agent_router::laps::Laps::start();
        let mut guard = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let last = &mut *guard;
        let json = l3agent_doc::Format::of(path) == l3agent_doc::Format::Json;
        // What was kept is of no use unless it is the config in force.
        let kept = last
            .kept
            .take()
            .filter(|(_, cfg)| json && in_force.is_some_and(|f| same_config(cfg, f)));
        let bytes = match l3agent_doc::read_into(path, &limits(), std::mem::take(&mut last.spare)) {
            Ok(bytes) => bytes,
            Err(e) => {
                last.kept = kept;
                return Err(doc_failure(path, &e));
            }
        };
        laps.lap("read");
        let loaded = match (&kept, in_force) {
            (Some((index, _)), Some(in_force)) => match index.splice(bytes) {
                // The file as it was: the config in force, and what was kept of it, stay.
                Splice::Same => {
                    last.kept = kept;
                    return Ok(in_force.clone());
                }
                Splice::One { index, text, next } => {
                    laps.lap("splice");
                    match serde_json::from_slice::<RouterDoc>(&next.bytes()[text]) {
                        Ok(router) => {
                            laps.lap("parse");
                            let mut doc = in_force.doc.clone();
                            doc.routers[index] = router;
                            laps.lap("clone");
                            let v =
                                validated(path, doc, Some(in_force)).map(|cfg| (Some(next), cfg));
                            laps.lap("validate");
                            tracing::debug!(router = index, %laps, "one router dict changed: read alone");
                            v
                        }
                        // Not one router dict: the whole document says what is wrong, and
                        // where.
                        Err(_) => Self::whole(path, json, next.into_bytes(), Some(in_force)),
                    }
                }
                Splice::Other(bytes) => Self::whole(path, json, bytes, Some(in_force)),
            },
            _ => Self::whole(path, json, bytes, in_force),
        };
        match loaded {
            Ok((index, cfg)) => {
                if let Some((old, _)) = kept {
                    last.spare = old.into_bytes();
                }
                last.kept = index.map(|i| (i, cfg.clone()));
                Ok(cfg)
            }
            // The config in force stays: so does what was kept of it.
            Err(f) => {
                last.kept = kept;
                Err(f)
            }
        }
    }

    /// `bytes` parsed and validated whole (and indexed, if `json`).
    fn whole(
        path: &Path,
        json: bool,
        bytes: Vec<u8>,
        in_force: Option<&HostConfig>,
    ) -> Result<(Option<ArrayIndex>, HostConfig), Failure> {
        tracing::debug!(bytes = bytes.len(), "reading the whole config");
        let doc: ConfigDoc = parse_doc(path, &bytes, EXPLICIT_HOST)?;
        let cfg = validated(path, doc, in_force)?;
        let index = json.then(|| ArrayIndex::new(bytes, "routers")).flatten();
        Ok((index, cfg))
    }
}

/// Whether `a` and `b` are one config (the same shared routers, in order, under the same
/// agent section): what tells the [`Reloader`] that the config in force is the one it kept.
fn same_config(a: &HostConfig, b: &HostConfig) -> bool {
    a.doc.agent == b.doc.agent
        && a.routers.len() == b.routers.len()
        && a.routers.iter().zip(&b.routers).all(|(x, y)| x.same(y))
        && a.doc.routers.len() == b.doc.routers.len()
        && a.doc
            .routers
            .iter()
            .zip(&b.doc.routers)
            .all(|(x, y)| x.same(y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// Three routers on the legacy example's networks, each with its own ids and addresses.
    fn routers() -> Vec<Value> {
        let example: Value = serde_json::from_str(include_str!(
            "../../../router/tests/data/neutron-router-legacy.json"
        ))
        .unwrap();
        (0..3u8)
            .map(|k| {
                let mut r = example.clone();
                r["id"] = format!("{k}a000000-0000-4000-8000-000000000000").into();
                for i in 0..2 {
                    r["_interfaces"][i]["id"] =
                        format!("{k}{i}b00000-0000-4000-8000-000000000000").into();
                }
                r["gw_port"]["id"] = format!("{k}9c00000-0000-4000-8000-000000000000").into();
                r["_floatingips"][0]["id"] =
                    format!("{k}d000000-0000-4000-8000-000000000000").into();
                r["_floatingips"][0]["floating_ip_address"] =
                    format!("203.0.113.{}", 10 + k).into();
                l3agent_testkit::renumber_router(&mut r, 20 + k);
                r
            })
            .collect()
    }

    fn agent() -> Value {
        json!({"mode": "legacy", "host": "host-a", "state_path": "/tmp/l3agent-test",
               "bridges": {"90e4912c-0eb8-4be4-a793-e6a3bba6ae8b": "br-t1",
                           "c6910e18-fb1f-4988-9af4-211a8c2e2926": "br-t2",
                           "65566f91-133a-44ff-87f5-ecffc1193d3d": "br-ex"}})
    }

    struct File(l3agent_testkit::TempDir, &'static str);

    impl File {
        fn new(name: &'static str) -> File {
            File(l3agent_testkit::TempDir::new("reload"), name)
        }
        fn path(&self) -> std::path::PathBuf {
            self.0.path().join(self.1)
        }
        /// Pretty-printed, as a person or a tool writes it.
        fn write(&self, agent: &Value, routers: &[Value]) {
            let text =
                serde_json::to_string_pretty(&json!({"agent": agent, "routers": routers})).unwrap();
            self.write_text(&text);
        }
        fn write_text(&self, text: &str) {
            std::fs::write(self.path(), text).unwrap();
        }
    }

    /// Loads `f` as a new version of `in_force` with `r`, and from scratch: both must agree.
    fn both(r: &Reloader, f: &File, in_force: &HostConfig) -> Result<HostConfig, String> {
        let kept = r.load(&f.path(), Some(in_force)).map_err(|e| e.message);
        let whole = super::super::load_host_config(&f.path()).map_err(|e| e.message);
        match (&kept, &whole) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.routers, b.routers);
                assert_eq!(a.doc, b.doc);
                assert_eq!(a.agent, b.agent);
            }
            (Err(a), Err(b)) => assert_eq!(a, b),
            _ => panic!("{kept:?}\nvs\n{whole:?}"),
        }
        kept
    }

    /// How many of `cfg`'s router dicts are `in_force`'s own (shared, not re-read).
    fn shared(cfg: &HostConfig, in_force: &HostConfig) -> usize {
        cfg.doc
            .routers
            .iter()
            .zip(&in_force.doc.routers)
            .filter(|(a, b)| a.same(b))
            .count()
    }

    #[test]
    fn an_edit_of_one_router_reads_that_router_alone_and_gives_what_a_whole_load_gives() {
        let f = File::new("host.json");
        let mut rs = routers();
        f.write(&agent(), &rs);
        let r = Reloader::default();
        let first = r.load(&f.path(), None).unwrap();
        assert_eq!(first.routers.len(), 3);
        // A floating IP added to the second router.
        rs[1]["_floatingips"]
            .as_array_mut()
            .unwrap()
            .push(json!({"id": "e0000000-0000-4000-8000-00000000000d",
                         "floating_ip_address": "203.0.113.50", "fixed_ip_address": "192.0.2.11"}));
        f.write(&agent(), &rs);
        let second = both(&r, &f, &first).unwrap();
        assert_eq!(shared(&second, &first), 2);
        assert!(!second.doc.routers[1].same(&first.doc.routers[1]));
        assert_eq!(second.routers[1].fips.len(), 2);
        // And again from there (what was kept moved on with the config in force).
        rs[2]["admin_state_up"] = false.into();
        f.write(&agent(), &rs);
        let third = both(&r, &f, &second).unwrap();
        assert_eq!(shared(&third, &second), 2);
        assert!(!third.routers[2].admin_state_up);
        // The same file again: the same config.
        let same = both(&r, &f, &third).unwrap();
        assert_eq!(shared(&same, &third), 3);
    }

    #[test]
    fn a_bad_edit_of_one_router_is_refused_as_a_whole_load_refuses_it_and_the_next_edit_still_splices(
    ) {
        let f = File::new("host.json");
        let mut rs = routers();
        f.write(&agent(), &rs);
        let r = Reloader::default();
        let first = r.load(&f.path(), None).unwrap();
        let good = std::fs::read_to_string(f.path()).unwrap();
        // A bad value, a value of the wrong type, broken JSON inside one router, and one
        // router's floating IP that is another's (a problem across routers).
        let cases = [
            good.replacen("\"192.0.2.20\"", "\"192.0.2.300\"", 1),
            good.replacen("\"mtu\": 1500", "\"mtu\": \"big\"", 1),
            good.replacen("\"mtu\": 1500", "\"mtu\": 1500,", 1),
            good.replacen("\"203.0.113.11\"", "\"203.0.113.10\"", 1),
        ];
        for bad in cases {
            assert_ne!(bad, good);
            f.write_text(&bad);
            let e = both(&r, &f, &first).unwrap_err();
            assert!(e.contains("routers["), "{e}");
        }
        // Not a host config at all: empty, or of the wrong type.
        for bad in ["", "[]", "{\"agent\": 1, \"routers\": []}"] {
            f.write_text(bad);
            let e = both(&r, &f, &first).unwrap_err();
            assert!(e.contains("host.json"), "{e}");
        }
        rs[0]["enable_snat"] = false.into();
        f.write(&agent(), &rs);
        let next = both(&r, &f, &first).unwrap();
        assert_eq!(shared(&next, &first), 2);
        assert!(!next.routers[0].enable_snat);
    }

    #[test]
    fn other_edits_and_yaml_files_are_loaded_whole() {
        let f = File::new("host.json");
        let mut rs = routers();
        f.write(&agent(), &rs);
        let r = Reloader::default();
        let first = r.load(&f.path(), None).unwrap();
        // The agent section.
        let mut a = agent();
        a["host"] = "host-b".into();
        f.write(&a, &rs);
        let second = both(&r, &f, &first).unwrap();
        assert_eq!(shared(&second, &first), 0);
        // A router removed, a router added.
        let gone = rs.remove(0);
        f.write(&a, &rs);
        let third = both(&r, &f, &second).unwrap();
        assert_eq!(third.routers.len(), 2);
        rs.push(gone);
        f.write(&a, &rs);
        let fourth = both(&r, &f, &third).unwrap();
        assert_eq!(fourth.routers.len(), 3);
        // Against a config that is not the one kept (another front end's, say).
        rs[1]["enable_snat"] = false.into();
        f.write(&a, &rs);
        let fifth = both(&r, &f, &first).unwrap();
        assert_eq!(shared(&fifth, &first), 0);
        // YAML: never kept.
        let y = File::new("host.yaml");
        y.write(&agent(), &routers());
        let r = Reloader::default();
        let first = r.load(&y.path(), None).unwrap();
        let again = r.load(&y.path(), Some(&first)).unwrap();
        assert_eq!(shared(&again, &first), 0);
        assert_eq!(again.routers, first.routers);
    }
}

//! What the recording-fake tests share: a fresh state directory, Neutron's legacy example
//! router, a legacy host config with its three bridges, and a world holding them.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use l3agent_router::config::{ConfigDoc, HostConfig};
use l3agent_router::fake::{SharedWorld, World};
use serde_json::{json, Value};

pub const BRIDGES: [&str; 3] = ["br-t1", "br-t2", "br-ex"];

/// A state directory path that does not exist yet (unique per process and call), removed
/// with what the test put there when the test is done with it.
pub fn state_dir() -> StateDir {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "l3agent-fake-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    StateDir(d)
}

/// See [`state_dir`]: reads as its path.
#[derive(Debug)]
pub struct StateDir(PathBuf);

impl std::ops::Deref for StateDir {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl serde::Serialize for StateDir {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl AsRef<std::path::Path> for StateDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Neutron's legacy example router (tests/data/neutron-router-legacy.json).
pub fn legacy_router() -> Value {
    serde_json::from_str(include_str!("../data/neutron-router-legacy.json")).expect("json")
}

#[allow(unused_imports)] // each test binary uses its own subset
pub use l3agent_testkit::renumber_router as renumber;

/// A validated legacy host config of `routers`, with the example's three bridges.
pub fn config(state: &PathBuf, routers: &[Value]) -> HostConfig {
    let v = json!({
        "agent": {"mode": "legacy", "host": "host-a", "state_path": state, "bridges": {
            "90e4912c-0eb8-4be4-a793-e6a3bba6ae8b": "br-t1",
            "c6910e18-fb1f-4988-9af4-211a8c2e2926": "br-t2",
            "65566f91-133a-44ff-87f5-ecffc1193d3d": "br-ex"}},
        "routers": routers,
    });
    let doc: ConfigDoc = serde_json::from_value(v).expect("doc");
    doc.validate().expect("valid")
}

/// A fake host with the bridges of [`config`].
pub fn world() -> SharedWorld {
    Arc::new(Mutex::new(World::with_bridges(&BRIDGES)))
}

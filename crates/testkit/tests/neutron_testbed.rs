//! The real Neutron control plane of `scripts/testbed/` (RabbitMQ, MariaDB, neutron-rpc-server
//! and the REST API of Neutron 29.0.0 from PyPI) comes up inside a throwaway network namespace
//! and does what the L3 tests need: external and tenant networks, a router with a gateway and
//! an interface, a port and a floating IP, whose status stays DOWN while no L3 agent runs.
//! Prints each phase's duration. The first run on a machine builds the venv (about a minute,
//! from PyPI, here in the test's own namespace: the test namespace has no way out).
#![allow(clippy::disallowed_methods)] // the test runs scripts/testbed/venv.sh

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use l3agent_testkit::neutron_api::{id, ApiError, NeutronApi, PortSpec};
use l3agent_testkit::service::{testbed_dir, Service};
use l3agent_testkit::TestNs;

const API_PORT: u16 = 9696;

/// The services' data, removed when the test passes and kept (for its logs) when it fails.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("logs kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn phase<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let v = f();
    eprintln!("phase {name}: {:.1} s", t.elapsed().as_secs_f64());
    v
}

fn sub(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

#[test]
fn neutron_control_plane_serves_l3_resources_in_a_test_namespace() {
    let total = Instant::now();
    phase("venv (built once per machine)", || {
        let script = testbed_dir().join("venv.sh");
        let out = Command::new(&script).output().expect("venv.sh");
        assert!(
            out.status.success(),
            "{}: {}\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    });
    let ns = TestNs::new("neutron");
    let scratch = Scratch(Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "neutron-testbed-{}-{}",
        std::process::id(),
        l3agent_testkit::unique()
    )));
    let dir = &scratch.0;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("scratch dir");

    // Dropped in reverse: neutron, mariadb, rabbitmq stop before the scratch and the namespace go.
    let _rabbitmq = phase("rabbitmq start", || {
        Service::start(&ns, "rabbitmq", &sub(dir, "rabbitmq"), &[])
    });
    let _mariadb = phase("mariadb start", || {
        Service::start(&ns, "mariadb", &sub(dir, "mariadb"), &[])
    });
    let socket = sub(dir, "mariadb").join("mysqld.sock");
    let db_url = format!(
        "mysql+pymysql://root@/neutron?unix_socket={}",
        socket.display()
    );
    let port = API_PORT.to_string();
    let _neutron = phase("neutron start (schema, RPC server, API)", || {
        Service::start(
            &ns,
            "neutron",
            &sub(dir, "neutron"),
            &[
                ("RABBIT_URL", "rabbit://guest:guest@127.0.0.1:5672/"),
                ("DB_URL", &db_url),
                ("NEUTRON_API_PORT", &port),
            ],
        )
    });

    let api = NeutronApi::new(&ns, API_PORT);
    let (ext, ext_subnet) = phase("external network + subnet", || {
        let net = api.create_external_network("public", "physnet1").unwrap();
        assert_eq!(net["router:external"], true, "{net}");
        assert_eq!(net["provider:network_type"], "flat", "{net}");
        let subnet = api
            .create_subnet(id(&net), "public-v4", "203.0.113.0/24")
            .unwrap();
        (net, subnet)
    });
    assert_eq!(ext_subnet["gateway_ip"], "203.0.113.1", "{ext_subnet}");
    let (private, private_subnet) = phase("tenant network + subnet", || {
        let net = api.create_tenant_network("private").unwrap();
        assert_eq!(net["provider:network_type"], "vxlan", "{net}");
        let subnet = api
            .create_subnet(id(&net), "private-v4", "198.51.100.0/24")
            .unwrap();
        (net, subnet)
    });
    let router = phase("router with gateway + interface", || {
        let router = api.create_router("r1", Some(id(&ext))).unwrap();
        let gw = &router["external_gateway_info"];
        assert_eq!(gw["network_id"], id(&ext), "{router}");
        let gw_ip = gw["external_fixed_ips"][0]["ip_address"]
            .as_str()
            .unwrap_or_default();
        assert!(gw_ip.starts_with("203.0.113."), "{router}");
        let itf = api
            .add_router_interface(id(&router), id(&private_subnet))
            .unwrap();
        assert_eq!(itf["subnet_id"], id(&private_subnet), "{itf}");
        router
    });
    let port = phase("port", || {
        api.create_port(&PortSpec {
            network_id: id(&private),
            subnet_id: Some(id(&private_subnet)),
            ip_address: Some("198.51.100.10"),
            host: Some("compute-1"),
            name: Some("vm1"),
            ..PortSpec::default()
        })
        .unwrap()
    });
    assert_eq!(
        port["fixed_ips"][0]["ip_address"], "198.51.100.10",
        "{port}"
    );
    assert_eq!(port["binding:host_id"], "compute-1", "{port}");
    let fip = phase("floating IP", || {
        api.create_floating_ip(id(&ext), Some(id(&port))).unwrap()
    });
    assert_eq!(fip["port_id"], id(&port), "{fip}");
    assert_eq!(fip["router_id"], id(&router), "{fip}");
    assert_eq!(fip["fixed_ip_address"], "198.51.100.10", "{fip}");

    let agents = phase("list agents", || api.list_agents().unwrap());
    assert!(agents.is_empty(), "no agent runs yet: {agents:?}");
    let shown = phase("show floating IP", || {
        api.show_floating_ip(id(&fip)).unwrap()
    });
    assert_eq!(
        shown["status"], "DOWN",
        "no L3 agent set it ACTIVE: {shown}"
    );

    phase("disassociate, reassociate, delete, tear down", || {
        let f = api.disassociate_floating_ip(id(&fip)).unwrap();
        assert!(f["port_id"].is_null(), "{f}");
        let f = api.associate_floating_ip(id(&fip), id(&port)).unwrap();
        assert_eq!(f["port_id"], id(&port), "{f}");
        api.delete_floating_ip(id(&fip)).unwrap();
        let gone = api.show_floating_ip(id(&fip)).unwrap_err();
        assert_eq!(gone.status(), Some(404), "{gone}");
        // Neutron refuses to delete a router that still has interfaces: the error carries it.
        let busy = api.delete_router(id(&router)).unwrap_err();
        assert_eq!(busy.status(), Some(409), "{busy}");
        assert!(busy.to_string().contains("RouterInUse"), "{busy}");
        api.delete_port(id(&port)).unwrap();
        api.remove_router_interface(id(&router), id(&private_subnet))
            .unwrap();
        api.delete_router(id(&router)).unwrap();
    });
    let refused = api
        .create_subnet(id(&private), "nope", "10.0.0.0/24")
        .unwrap_err();
    assert!(
        matches!(refused, ApiError::NotDocumentationPrefix(_)),
        "{refused}"
    );
    eprintln!(
        "total (before teardown): {:.1} s",
        total.elapsed().as_secs_f64()
    );
}

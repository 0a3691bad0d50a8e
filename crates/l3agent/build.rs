//! Stamps the binary with the git revision it was built from (`l3agent --version`):
//! `L3AGENT_GIT_REVISION` if set (packagers), else `git describe` of this checkout, else
//! "unknown" (a source tarball).
#![allow(clippy::disallowed_methods)] // a build script asks git, once, at build time

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=L3AGENT_GIT_REVISION");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for f in [".git/HEAD", ".git/index", ".git/packed-refs"] {
        if root.join(f).exists() {
            println!("cargo:rerun-if-changed={}", root.join(f).display());
        }
    }
    let revision = std::env::var("L3AGENT_GIT_REVISION").ok().or_else(|| {
        let out = Command::new("git")
            .args([
                "describe",
                "--always",
                "--dirty",
                "--abbrev=12",
                "--exclude",
                "*",
            ])
            .current_dir(&root)
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        let text = text.trim();
        (out.status.success() && !text.is_empty()).then(|| text.to_owned())
    });
    println!(
        "cargo:rustc-env=L3AGENT_GIT_REVISION={}",
        revision.unwrap_or_else(|| "unknown".into())
    );
}

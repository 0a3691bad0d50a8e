//! `l3agent`: Neutron's L3 agent dataplane, rebuilt in Rust. This binary is thin: it parses
//! the command line, reads files, and wires the libraries together.

mod cli;

use clap::Parser;

/// mimalloc: reading a 50,000-rule file into the model makes and frees some million small
/// strings; glibc's malloc/free were ~37% of that work (issue 14). Transparent huge pages are
/// off for this process (`no_thp`): their faults stalled the build for tens of milliseconds.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args = cli::Cli::parse();
    let filter = std::env::var("L3AGENT_LOG").unwrap_or_else(|_| match args.verbose {
        0 => "warn".to_owned(),
        1 => "info".to_owned(),
        _ => "debug".to_owned(),
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    if args.log_json {
        // One JSON object per line, with the spans (router ids) as fields.
        logs.json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let code = cli::run(args);
    // Everything this process did is done and written: it ends here, without freeing what it
    // still holds or running the allocator's exit-time purge (~10 ms after a 50,000-rule
    // apply, issue 14); the kernel takes the memory back whole and releases the locks.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process at once; nothing runs after it in this process.
    unsafe { libc::_exit(i32::from(code)) }
}

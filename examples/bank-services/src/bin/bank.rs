//! The demo: starts one accounts, one reporting and one gateway process
//! (the binaries next to this one) on the machine's PostgreSQL and NATS,
//! and stops them all on Ctrl-C or SIGTERM, or when one of them exits.
//!
//! `cargo run -p bank-services` builds and starts it; the gateway listens
//! on `HTTP_ADDR` (default 127.0.0.1:8080). Every variable of
//! `bank_services::Config` is passed on; `INSTANCES` (default 1) starts
//! that many accounts and reporting instances.

use std::process::ExitCode;

use tokio::process::{Child, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let instances: usize = std::env::var("INSTANCES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1);
    let dir = match std::env::current_exe() {
        Ok(exe) => exe.parent().map(std::path::Path::to_path_buf),
        Err(_) => None,
    };
    let Some(dir) = dir else {
        eprintln!("bank: cannot tell where its own binary is, to start the others");
        return ExitCode::FAILURE;
    };
    let start = |name: &str, http: Option<String>| -> Result<Child, String> {
        let path = dir.join(name);
        let mut command = Command::new(&path);
        if let Some(http) = http {
            command.env("HTTP_ADDR", http);
        }
        command.kill_on_drop(true).spawn().map_err(|e| {
            format!(
                "cannot start {}: {e} (build it with `cargo build -p bank-services`)",
                path.display()
            )
        })
    };
    let mut children = Vec::new();
    for i in 0..instances {
        // Each instance's health and metrics port: 9101, 9111, ... and 9102, 9112, ...
        for (name, base) in [("accounts", 9101), ("reporting", 9102)] {
            match start(name, Some(format!("127.0.0.1:{}", base + 10 * i))) {
                Ok(child) => children.push((name, child)),
                Err(e) => {
                    eprintln!("bank: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    match start("gateway", None) {
        Ok(child) => children.push(("gateway", child)),
        Err(e) => {
            eprintln!("bank: {e}");
            return ExitCode::FAILURE;
        }
    }
    let exited = futures::future::select_all(
        children
            .iter_mut()
            .map(|(name, child)| Box::pin(async move { (*name, child.wait().await) })),
    );
    let code = tokio::select! {
        ((name, status), _, _) = exited => {
            eprintln!("bank: {name} exited ({status:?}); stopping the others");
            ExitCode::FAILURE
        }
        _ = bank_services::runtime::shutdown_signal() => ExitCode::SUCCESS,
    };
    // SIGTERM to each, so they stop gracefully; killed if they do not.
    for (_, child) in &children {
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
    }
    for (name, child) in &mut children {
        match tokio::time::timeout(std::time::Duration::from_secs(10), child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("bank: {name} did not stop in 10 s; killing it");
                let _ = child.kill().await;
            }
        }
    }
    code
}

//! The load driver: `load [GATEWAY] [CLIENTS] [REQUESTS] [ACCOUNTS]`
//! (defaults `http://127.0.0.1:8080 32 5000 50`). Opens the accounts,
//! sends the deposits through the gateway, prints a JSON report
//! (acknowledged, failed, retries, errors by status, requests/s, p50 and
//! p99 latency) and exits; loopback addresses only.

use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bank_services::load::{run, Load};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| -> Result<usize, String> {
        match args.get(i) {
            Some(text) => text
                .parse()
                .map_err(|_| format!("argument {} ({text:?}) is not a whole number", i + 1)),
            None => Ok(default),
        }
    };
    let mut load = Load::new(
        args.first()
            .cloned()
            .unwrap_or_else(|| "http://127.0.0.1:8080".into()),
    );
    let parsed = (|| -> Result<(), String> {
        load.clients = number(1, 32)?.max(1);
        load.requests = number(2, 5_000)?;
        load.accounts = number(3, 50)?.max(1);
        Ok(())
    })();
    if let Err(e) = parsed {
        eprintln!("load: {e}\nusage: load [GATEWAY] [CLIENTS] [REQUESTS] [ACCOUNTS]");
        return ExitCode::from(2);
    }
    match run(&load, Arc::new(AtomicU64::new(0))).await {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("a report serialises")
            );
            if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `es`: the operator's command for evently logs. See the crate's docs.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    evently_cli::Cli::new().run().await
}

//! What the test binaries share: the database, schemas, the bank example.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

pub fn url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn schema(name: &str) -> String {
    format!("es_test_cli_{name}_{}", std::process::id())
}

pub async fn drop_schema(schema: &str) {
    let pool = sqlx::PgPool::connect(&url())
        .await
        .expect("PostgreSQL at DATABASE_URL (the tests need it)");
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&pool)
        .await
        .expect("drop the schema");
}

/// The bank example's binary. `cargo test` builds examples with tests of
/// their own as test harnesses only, so this builds the plain binary once
/// per run, into this test's target directory, with the test command's
/// features (so it reuses what that command built).
pub fn bank_example() -> PathBuf {
    static BUILT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = &*built {
        return path.clone();
    }
    let exe = std::env::current_exe().expect("the test's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let target_dir = profile_dir.parent().expect("target/");
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace");
    let status = Command::new(env!("CARGO"))
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", target_dir)
        .args([
            "build",
            "--quiet",
            "-p",
            "evently",
            "--example",
            "bank_account",
            "--all-features",
        ])
        .status()
        .expect("run cargo to build the bank example");
    assert!(
        status.success(),
        "cargo build --example bank_account failed"
    );
    let path = profile_dir.join("examples").join("bank_account");
    assert!(
        path.exists(),
        "{} is missing after the build",
        path.display()
    );
    *built = Some(path.clone());
    path
}

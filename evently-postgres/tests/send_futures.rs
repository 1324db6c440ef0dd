//! The store's futures are `Send`, so a service can connect, migrate and
//! append from spawned tasks (`tokio::spawn`, web handlers). A compile-time
//! property: checked by compiling `tests/send/*.rs` with trybuild, so a
//! regression fails this test instead of breaking the build of every other
//! test.

#[test]
fn the_store_s_futures_can_be_spawned() {
    let t = trybuild::TestCases::new();
    t.pass("tests/send/*.rs");
}

//! Every misuse of the derives that the macros diagnose, with the exact
//! message and span expected (`tests/ui/*.stderr`).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}

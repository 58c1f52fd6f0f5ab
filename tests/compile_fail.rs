//! Misuse of generated code is a compile error (trybuild). The expected messages are
//! in `ui/*.stderr`; regenerate them with `TRYBUILD=overwrite` after a toolchain change.

#[test]
fn misuse_does_not_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/*.rs");
}

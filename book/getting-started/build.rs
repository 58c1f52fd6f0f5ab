fn main() {
    // Reads schemas/*.yaml, writes $OUT_DIR/orkestra_generated.rs (included by src/lib.rs)
    // and tells cargo to run again when a schema is added, changed or removed.
    let generated = orkestra_gen::Generator::new()
        .schemas("schemas")
        .app_prefix("MyShop")
        .generate();
    if let Err(error) = generated {
        // Every schema mistake, one `file:line:col: error: ...` line each.
        eprintln!("{error}");
        std::process::exit(1);
    }
}

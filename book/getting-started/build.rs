fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Reads schemas/*.yaml, writes $OUT_DIR/orkestra_generated.rs and tells cargo to run
    // again when a schema is added, changed or removed.
    orkestra_gen::Generator::new()
        .schemas("schemas")
        .app_prefix("Shop")
        .generate()?;
    Ok(())
}

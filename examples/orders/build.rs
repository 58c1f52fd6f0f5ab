fn main() -> Result<(), Box<dyn std::error::Error>> {
    orkestra_gen::Generator::new()
        .schemas("../../schemas")
        // The example's own namespace: an aggregate (`Ledger.Account`).
        .schemas("schemas")
        .app_prefix("Shop")
        .generate()?;
    Ok(())
}

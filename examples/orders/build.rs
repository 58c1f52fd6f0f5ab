fn main() -> Result<(), Box<dyn std::error::Error>> {
    orkestra_gen::Generator::new()
        .schemas("../../schemas")
        // The example's own namespaces: an aggregate (`Ledger.Account`) and a process
        // manager (`Fulfil.Fulfilment`).
        .schemas("schemas")
        .app_prefix("Shop")
        .generate()?;
    Ok(())
}

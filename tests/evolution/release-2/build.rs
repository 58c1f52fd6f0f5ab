fn main() -> Result<(), Box<dyn std::error::Error>> {
    orkestra_gen::Generator::new()
        .schemas("schemas")
        .app_prefix("Shop")
        .generate()?;
    Ok(())
}

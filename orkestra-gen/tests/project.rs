//! Every `orkestra.toml` that `orkestra-gen new` can write is one the runtime reads, naming
//! the adapters asked for (the builds themselves are tested in `orkestra-cli/tests`).

use orkestra_gen::project::{BusAdapter, NewProject, StoreAdapter};

#[test]
fn every_configuration_new_writes_is_read_by_the_runtime() {
    for bus in [BusAdapter::InProcess, BusAdapter::RabbitMq] {
        for store in [
            StoreAdapter::Sqlite,
            StoreAdapter::Postgres,
            StoreAdapter::Memory,
        ] {
            let files = NewProject::new("my-shop")
                .bus(bus)
                .store(store)
                .files()
                .unwrap();
            let text = &files
                .iter()
                .find(|f| f.path == std::path::Path::new("orkestra.toml"))
                .unwrap()
                .content;
            let config = orkestra_runtime::Config::from_toml_str(text)
                .unwrap_or_else(|e| panic!("{bus:?} {store:?}: {e}\n{text}"));
            assert_eq!(config.bus.adapter.name(), bus.name(), "{text}");
            assert_eq!(config.store.adapter.name(), store.name(), "{text}");
        }
    }
}
